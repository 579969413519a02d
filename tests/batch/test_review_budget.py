"""``batch-snap --review-budget``: single snapped edges for a person, least likely right first,
with the number of wrong edges they should hold printed; kept boxes never listed."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from snapper import batch as B
from snapper.batch.merge import REVIEW_EDGE_COLUMNS
from snapper.cli import main as cli
from snapper.geometry import EDGE_NAMES, xywh_to_xyxy


def _snapped_edges(df: pd.DataFrame) -> pd.DataFrame:
    """Every snapped edge with its confidence and coordinates, in input order."""
    snapped = df[df["status"] == B.SNAPPED]
    pred = xywh_to_xyxy(snapped[B.PRED_COLS].to_numpy(np.float64))
    rough = xywh_to_xyxy(snapped[B.ROUGH_COLS].to_numpy(np.float64))
    return pd.DataFrame({"annotation_id": np.repeat(snapped["annotation_id"].to_numpy(), 4),
                         "edge": np.tile(EDGE_NAMES, len(snapped)),
                         "confidence": snapped[B.CONF_COLS].to_numpy(np.float64).reshape(-1),
                         "snapped_px": pred.reshape(-1), "rough_px": rough.reshape(-1)})


def test_the_budget_lists_the_least_confident_snapped_edges_in_order(rough, ckpt, tmp_path, capsys):
    ann, images, _ = rough
    out = tmp_path / "o"
    args = ["batch-snap", str(ann), str(images), str(out), "--model", str(ckpt), "--workers", "0", "--device", "cpu",
            "--no-guard"]
    assert cli([*args, "--review-budget", "5"]) == 0
    df = pd.read_parquet(out / B.BOXES_PARQUET)
    listed = pd.read_csv(out / B.REVIEW_EDGES_CSV)
    assert list(listed.columns) == REVIEW_EDGE_COLUMNS and len(listed) == 5
    every = _snapped_edges(df).sort_values("confidence", kind="stable")
    expected = every.head(5).reset_index(drop=True)
    pd.testing.assert_frame_equal(listed[expected.columns], expected, check_dtype=False)
    assert listed["confidence"].is_monotonic_increasing
    kept = set(df.loc[df["status"] == B.KEPT, "annotation_id"])
    assert kept and not kept & set(listed["annotation_id"])
    s = json.loads((out / B.SUMMARY_JSON).read_text())
    wrong = float((1 - listed["confidence"]).sum())
    assert s["review_budget"]["n_edges"] == 5 and s["review_budget"]["expected_wrong"] == pytest.approx(wrong, abs=1e-3)
    assert s["calibrated"] is False
    printed = capsys.readouterr().out
    assert f"review 5 edges: expected to catch ~{wrong:.1f} wrong edges" in printed and "uncalibrated" in printed

    # a share of the snapped edges: rounded up, the same order; more than there are: all of them
    n_snapped = 4 * int((df["status"] == B.SNAPPED).sum())
    share = B.review_edges(df, 0.1)
    assert len(share) == math.ceil(0.1 * n_snapped)
    assert share["confidence"].tolist() == every["confidence"].head(len(share)).tolist()
    assert len(B.review_edges(df, 10_000)) == n_snapped

    # without a budget the list of an earlier run does not stay behind; a half edge is refused
    assert cli(args) == 0 and not (out / B.REVIEW_EDGES_CSV).exists()
    with pytest.raises(SystemExit) as e:
        cli([*args, "--review-budget", "1.5"])
    assert e.value.code == 2 and "--review-budget" in capsys.readouterr().err
