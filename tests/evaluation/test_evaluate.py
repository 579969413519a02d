"""Evaluation: one Parquet table with every box for every method, Table 1, confidence, plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from snapper.cli.evaluate import main as cli_main  # noqa: E402
from snapper.config import EvalConfig, ModelConfig, SnapSettings  # noqa: E402
from snapper.evaluation.evaluate import IDENTITY, evaluate, evaluate_checkpoint, evaluate_identity  # noqa: E402
from snapper.evaluation.metrics import TABLE1_COLUMNS  # noqa: E402
from snapper.geometry import paired_iou, xywh_to_xyxy  # noqa: E402
from snapper.inference.snap import Snapper  # noqa: E402
from snapper.models.checkpoint import save_checkpoint  # noqa: E402
from snapper.models.net import build_model  # noqa: E402
from tests.helpers import TINY_MODEL, make_tiny_shards

PNG = b"\x89PNG\r\n\x1a\n"




@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    shards = make_tiny_shards(root)
    torch.manual_seed(0)
    ckpts = {}
    for head in ("edges", "regression"):
        cfg = ModelConfig(head=head, **TINY_MODEL)
        ckpts["snapper" if head == "edges" else "regression"] = str(
            save_checkpoint(root / head, build_model(cfg).eval(), cfg))
    return root, shards, ckpts


def _expected_ids(shards) -> set[int]:
    """Annotation ids of every image in the shards, straight from the COCO file."""
    data = json.loads(Path(shards["ann"]).read_text())
    return {a["id"] for a in data["annotations"] if not a.get("iscrowd")}


def test_evaluate_writes_every_box_for_every_method(setup, tmp_path):
    root, shards, ckpts = setup
    cfg = EvalConfig(shards=shards["train"] + shards["val"], snap=SnapSettings(batch_size=16, device="cpu"))
    res = evaluate(ckpts, cfg, tmp_path / "out", n_examples=6)

    df = pd.read_parquet(res.parquet)
    assert Path(res.parquet) == tmp_path / "out" / "boxes.parquet"
    expected = _expected_ids(shards)
    for method in ("snapper", "regression", IDENTITY):
        rows = df[df["method"] == method]
        assert set(rows["annotation_id"]) == expected and len(rows) == len(expected)
    for col in ("image_id", "annotation_id", "category_id", "size", "rough_x", "pred_x", "true_x", "iou",
                "dev_left", "dev_top_left", "conf_left", "method"):
        assert col in df.columns
    ident = df[df["method"] == IDENTITY]
    rough = ident[["rough_x", "rough_y", "rough_w", "rough_h"]].to_numpy()
    assert np.allclose(ident[["pred_x", "pred_y", "pred_w", "pred_h"]].to_numpy(), rough)
    true = xywh_to_xyxy(ident[["true_x", "true_y", "true_w", "true_h"]].to_numpy())
    assert np.allclose(ident["iou"], paired_iou(xywh_to_xyxy(rough), true))
    # The same rough box for a given annotation, whatever the method.
    snap = df[df["method"] == "snapper"].set_index("annotation_id").sort_index()
    assert np.allclose(snap[["rough_x", "rough_y"]].to_numpy(),
                       ident.set_index("annotation_id").sort_index()[["rough_x", "rough_y"]].to_numpy())
    # Confidence: in [0, 1] for the edge model, absent for regression and identity.
    assert snap[["conf_left", "conf_bottom"]].stack().between(0, 1).all()
    assert df.loc[df["method"] != "snapper", "conf_left"].isna().all()

    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert set(TABLE1_COLUMNS) <= set(summary.columns)
    overall = summary[summary["size"] == "all"].set_index("method")
    assert set(overall.index) == {"snapper", "regression", IDENTITY}
    assert (overall["n_boxes"] == len(expected)).all()
    assert "mIoU" in res.table_md and "| identity | all |" in res.table_md
    assert res.metrics["identity/all/n_boxes"] == len(expected)
    assert "snapper/all/iou_gt_0.9" in res.metrics
    conf = pd.read_csv(tmp_path / "out" / "confidence.csv")
    assert set(conf["method"]) == {"snapper"} and conf["n_edges"].sum() == 4 * len(expected)
    for name in ("deviance", "confidence", "examples", "reliability"):
        p = Path(res.plots[name])
        assert p.suffix == ".png" and p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    # calibration error of the confidence each model gives: only the edge model gives one
    cal = pd.read_csv(tmp_path / "out" / "calibration.csv")
    assert set(cal["method"]) == {"snapper"} and not cal["calibrated"].any()
    overall = cal[cal["size"] == "all"].iloc[0]
    assert overall["n_edges"] == 4 * len(expected) and 0 <= overall["ece"] <= 1
    assert res.metrics["snapper/all/edge_ece"] == overall["ece"]


def test_example_boxes_do_not_depend_on_batching_and_span_the_iou_range(setup):
    from snapper.evaluation.evaluate import evaluate_checkpoint, spread_by_iou

    root, shards, ckpts = setup
    picked = []
    for bs in (3, 16):
        ex: list = []
        df = evaluate_checkpoint(ckpts["snapper"], EvalConfig(shards=shards["train"] + shards["val"],
                                                             snap=SnapSettings(batch_size=bs, device="cpu")), examples=ex, n_examples=4)
        picked.append([e["annotation_id"] for e in ex])
        assert len(ex) == 4 and [e["iou"] for e in ex] == sorted(e["iou"] for e in ex)  # worst first
        for e in ex:  # each example is the box's own row
            assert e["iou"] == pytest.approx(float(df.loc[df["annotation_id"] == e["annotation_id"], "iou"].iloc[0]))
    assert picked[0] == picked[1]
    pool = [{"iou": v, "annotation_id": i} for i, v in enumerate([0.9, 0.1, 0.5, 0.7, 0.3])]
    assert [e["iou"] for e in spread_by_iou(pool, 3)] == [0.1, 0.5, 0.9]
    assert len(spread_by_iou(pool, 10)) == 5 and spread_by_iou([], 3) == []


def test_identity_alone_matches_identity_from_a_model_pass(setup, tmp_path):
    root, shards, ckpts = setup
    cfg = EvalConfig(shards=shards["val"], snap=SnapSettings(device="cpu"))
    alone = evaluate_identity(cfg).set_index("annotation_id").sort_index()
    res = evaluate({"snapper": ckpts["snapper"]}, cfg, tmp_path / "o", plots=False)
    df = pd.read_parquet(res.parquet)
    via = df[df["method"] == IDENTITY].set_index("annotation_id").sort_index()
    assert list(alone.index) == list(via.index)
    assert np.allclose(alone["iou"], via["iou"])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate({}, cfg, tmp_path / "n", include_identity=False)


def test_max_boxes_and_buffer_ratio(setup, tmp_path):
    root, shards, ckpts = setup
    res = evaluate({"snapper": ckpts["snapper"]}, EvalConfig(shards=shards["train"], max_boxes=5,
                                                             snap=SnapSettings(buffer_ratio=1.5, device="cpu")), tmp_path / "o", plots=False)
    df = pd.read_parquet(res.parquet)
    assert (df.groupby("method").size() == 5).all()


def test_memory_format_setting_reaches_the_model(setup, tmp_path, monkeypatch):
    root, shards, ckpts = setup
    seen = []
    original = Snapper.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self.channels_last)

    monkeypatch.setattr(Snapper, "__init__", spy)
    tables = [evaluate_checkpoint(ckpts["snapper"], EvalConfig(shards=shards["train"], max_boxes=8,
                                                               snap=SnapSettings(device="cpu", channels_last=cl))) for cl in (True, False)]
    assert seen == [True, False]
    cols = ["pred_x", "pred_y", "pred_w", "pred_h"]
    assert np.abs(tables[0][cols].to_numpy() - tables[1][cols].to_numpy()).max() < 1e-3


def test_cli_prints_table_and_logs_to_mlflow(setup, tmp_path, capsys, monkeypatch):
    root, shards, ckpts = setup
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("SNAPPER_HOME", str(tmp_path))
    rc = cli_main(["--shards", str(shards["dir"]), "--split", "val",
                   "--model", f"edges={ckpts['snapper']}", "--model", ckpts["regression"],
                   "--out-dir", str(tmp_path / "cli"), "--device", "cpu", "--no-plots", "--mlflow"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| edges | all |" in out and "| regression | all |" in out and "| identity | all |" in out
    import mlflow

    (logged,) = mlflow.search_runs(experiment_names=["snapper-eval"], output_format="list")
    assert "eval/edges/all/miou" in logged.data.metrics
    assert cli_main(["--shards", str(tmp_path / "missing-*.tar"), "--out-dir", str(tmp_path / "x")]) == 2
