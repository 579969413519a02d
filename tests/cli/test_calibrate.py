"""``snapper calibrate`` as a user runs it: a new checkpoint folder with the same weights and the
fitted calibration (one map by default, one map per rough-box size bucket with --per-size),
its report files, ECE printed; the read-out reads the maps as the fit bucketed the edges; bad
splits refused in one line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from snapper.cli import main as cli
from snapper.config import EvalConfig, SnapSettings
from snapper.evaluation.calibrate import CALIBRATION_JSON, RELIABILITY_PNG
from snapper.evaluation.evaluate import evaluate_checkpoint
from snapper.evaluation.metrics import CONF_COLS
from snapper.inference.snap import Snapper
from snapper.models.checkpoint import copy_checkpoint, load_checkpoint
from snapper.models.edges import calibrate_confidence
from tests.batchdata import tiny_checkpoint
from tests.helpers import make_tiny_shards


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    return root, make_tiny_shards(root), tiny_checkpoint(root / "ck")


def test_calibrate_writes_a_calibrated_checkpoint_and_its_report(setup, tmp_path, capsys):
    _, shards, ckpt = setup
    out = tmp_path / "calibrated"
    args = ["calibrate", "--model", str(ckpt), "--shards", *shards["train"], "--report-shards", *shards["val"],
            "--out", str(out), "--device", "cpu", "--batch-size", "32", "--draws", "2", "--resamples", "20", "--per-size"]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "ECE selection (in-sample):" in printed and "ECE report:" in printed and str(out) in printed
    assert "beta (a=" in printed and "perfectly calibrated:" in printed and "small rough boxes (" in printed
    assert "reviewing the least confident 10%" in printed
    assert (out / "model.pt").read_bytes() == (ckpt / "model.pt").read_bytes()
    _, cfg, meta = load_checkpoint(out)
    maps = cfg.calibration  # --per-size: one map per size bucket of the rough box
    assert isinstance(maps, dict) and "all" in maps and meta["calibrated_from"] == str(ckpt)
    assert meta["calibration_per_size"] is True
    record = json.loads((out / CALIBRATION_JSON).read_text())
    assert record["knots"] == {k: {"x": x, "y": y} for k, (x, y) in maps.items()}
    assert record["per_size"] is True and record["confidence_px"] == cfg.confidence_px
    assert set(record["size_maps"]) == {"all", "small", "medium", "large"}
    assert {k for k, v in record["size_maps"].items() if v["own_map"]} == set(maps)
    assert {(r["split"], r["stage"]) for r in record["ece"]} == {(s, t) for s in ("selection", "report")
                                                                 for t in ("before", "after")}
    assert record["method"] == "beta" and set(record["params"]) == {"a", "b", "k"} and record["seeds"] == [0, 1]
    assert {"ece_first_draw", "ece_lo", "ece_hi", "ece_floor"} <= set(record["ece"][0])
    review = {(r["split"], r["stage"], r["draws"]): r["caught_pct"] for r in record["review"]}
    assert len(review) == 8
    assert (out / RELIABILITY_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Snapper.from_checkpoint(out, device="cpu").cfg.calibration == maps


def test_the_read_out_buckets_boxes_as_the_fit_did(setup):
    """Evaluation (the read-out every entry point shares) maps each box's raw confidence with the
    map of its rough box's bucket, by the rough box the fit's edges were bucketed by."""
    _, shards, ckpt = setup
    _, cfg, _ = load_checkpoint(ckpt)
    maps = {"all": [[0.0, 1.0], [0.3, 0.4]], "small": [[0.0, 1.0], [0.5, 0.6]],
            "medium": [[0.0, 1.0], [0.1, 0.2]], "large": [[0.0, 1.0], [0.8, 0.9]]}
    out = ckpt.parent / "per-size-by-hand"
    copy_checkpoint(ckpt, out, dataclasses.replace(cfg, calibration=maps))
    ev = EvalConfig(shards=shards["val"], snap=SnapSettings(device="cpu", batch_size=32))
    raw = evaluate_checkpoint(out, ev, calibrated=False)
    cal = evaluate_checkpoint(out, ev)
    area = (raw["rough_w"] * raw["rough_h"]).to_numpy()
    assert len(np.unique(np.digitize(area, [32**2, 96**2]))) >= 2  # boxes of more than one bucket
    np.testing.assert_allclose(cal[CONF_COLS].to_numpy(), calibrate_confidence(raw[CONF_COLS].to_numpy(), maps, area))


def test_bad_splits_and_outputs_are_one_line(setup, tmp_path, capsys):
    _, shards, ckpt = setup
    base = ["calibrate", "--model", str(ckpt), "--device", "cpu"]
    assert cli([*base, "--shards", *shards["train"], "--report-shards", shards["train"][0],
                "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "held out" in err[0]
    assert cli([*base, "--shards", *shards["train"], "--out", str(ckpt)]) == 2
    assert "the model's own folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_isotonic_is_still_an_option(setup, tmp_path, capsys):
    _, shards, ckpt = setup
    out = tmp_path / "iso"
    assert cli(["calibrate", "--model", str(ckpt), "--shards", *shards["train"], "--out", str(out), "--device", "cpu",
                "--method", "isotonic", "--draws", "1", "--resamples", "0", "--no-plots"]) == 0  # the default: one map
    record = json.loads((out / CALIBRATION_JSON).read_text())
    assert record["method"] == "isotonic" and record["params"] == {} and "ece_lo" not in record["ece"][0]
    x, y = load_checkpoint(out)[1].calibration  # one map: plain knots, as before per-size maps
    assert record["per_size"] is False and record["knots"] == {"x": x, "y": y} and "size_maps" not in record
    review = {(r["split"], r["stage"], r["draws"]): r["caught_pct"] for r in record["review"]}
    assert review["selection", "before", "all"] == review["selection", "after", "all"]  # one map keeps the order
    assert "isotonic fitted on" in capsys.readouterr().out and not (out / RELIABILITY_PNG).exists()
