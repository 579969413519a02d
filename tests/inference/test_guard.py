"""The broken-box guard on a crafted model output, through every entry point: a box whose
decoded edges cross comes back as its rough box, a far-moved edge keeps its rough position, and
each says so (issue 22, item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from snapper import batch as B
from snapper.cli import main as cli
from snapper.config import EvalConfig, SnapSettings
from snapper.errors import ConfigError
from snapper.evaluation.evaluate import IDENTITY, evaluate
from snapper.inference.guard import guard_boxes
from snapper.inference.snap import Snapper
from snapper.integrations.labelstudio import SnapperBackend, create_app
from snapper.mlops.pyfunc import encode_image, snap_rows
from tests.batchdata import assert_accounted, fast_config, tiny_checkpoint
from tests.helpers import make_tiny_shards

W, H = 90, 60
CROSSED = [5.0, 5.0, 40.0, 30.0]  # rough width 40: the crafted model crosses its left and right edges
MOVED = [45.0, 10.0, 30.0, 36.0]  # rough width 30: its bottom edge decoded half the height up
PLAIN = [20.0, 25.0, 20.0, 20.0]  # rough width 20: decoded where it was drawn


def crafted(self: Snapper, crops, geometry=None, area=None):
    """A model output by rough-box width (read back from the crop window): crossed edges for
    width 40, the bottom edge moved up by half the height for width 30, else the rough box;
    ``all_crossed`` on the class crosses every box."""
    s = self.cfg.input_size
    ratio = self.cfg.context * self.settings.buffer_ratio
    width = (geometry.windows[:, 2] - geometry.windows[:, 0]) / ratio
    half = s / (2 * ratio)
    pos = np.tile([s / 2 - half, s / 2 - half, s / 2 + half, s / 2 + half], (len(crops), 1))
    crossed = np.isclose(width, 40.0, atol=0.01) | getattr(type(self), "all_crossed", False)
    moved = np.isclose(width, 30.0, atol=0.01)
    pos[crossed, 0], pos[crossed, 2] = s / 2 + 3, s / 2 - 3
    pos[moved, 3] = s / 2  # half the rough height up: 0.5 > max_edge_move
    return pos, np.full((len(crops), 4), 0.8)


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(Snapper, "predict_crops", crafted)
    return tiny_checkpoint(tmp_path / "tiny")


def _image(path: Path) -> Path:
    arr = np.zeros((H, W, 3), np.uint8)
    arr[10:40, 20:70] = (200, 100, 50)
    Image.fromarray(arr).save(path)
    return path


def _xyxy(b: list[float]) -> np.ndarray:
    return np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]])


def test_the_rules() -> None:
    rough = np.array([[10, 10, 50, 30], [10, 10, 50, 30], [10, 10, 50, 30]], dtype=float)
    snapped = np.array([[30, 12, 31, 28], [12, 11, 49, 22], [11, 12, 48, 29]], dtype=float)
    out, g = guard_boxes(snapped, rough, 0.35)
    np.testing.assert_array_equal(out[0], rough[0])  # 1 px wide: collapsed, the whole rough box
    np.testing.assert_array_equal(out[1], [12, 11, 49, 30])  # bottom moved 8 of 20 px > 0.35: rough bottom
    np.testing.assert_array_equal(out[2], snapped[2])
    assert [g.describe(i) for i in range(3)] == [
        {"reason": "collapsed", "edges": ["left", "top", "right", "bottom"]},
        {"reason": "moved", "edges": ["bottom"]}, None]
    assert [g.label(i) for i in range(3)] == ["collapsed", "moved:bottom", ""]
    with pytest.raises(ConfigError, match="snap.max_edge_move"):
        SnapSettings(max_edge_move=0)


def test_snap_cli_reports_the_guard(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _image(tmp_path / "a.png")
    boxes = [",".join(f"{v:g}" for v in b) for b in (CROSSED, MOVED, PLAIN)]
    args = ["snap", str(image), "--model", str(model), *[a for b in boxes for a in ("--box", b)]]
    assert cli(args) == 0
    out = json.loads(capsys.readouterr().out)["boxes"]
    assert [b["guard"] for b in out] == [{"reason": "collapsed", "edges": ["left", "top", "right", "bottom"]},
                                         {"reason": "moved", "edges": ["bottom"]}, None]
    assert out[0]["bbox"] == pytest.approx(CROSSED) and out[1]["bbox"] == pytest.approx(MOVED)
    assert out[2]["bbox"] == pytest.approx(PLAIN, abs=1e-6)
    assert all(isinstance(v, float) for b in out for v in b["confidence"].values())  # numbers, not NaN
    assert cli([*args, "--no-guard"]) == 0  # off: the model's broken boxes as decoded
    raw = json.loads(capsys.readouterr().out)["boxes"]
    assert raw[0]["guard"] is None and raw[0]["bbox"][2] <= 1.0 and raw[1]["bbox"][3] < MOVED[3] * 0.6


def test_batch_snap_keeps_a_collapsed_box_and_counts_the_guard(model: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": b, "iscrowd": 0}
                            for i, b in ((1, CROSSED), (2, MOVED), (3, PLAIN))]}
    (tmp_path / "rough.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert cli(["batch-snap", str(tmp_path / "rough.json"), str(images), str(out), "--model", str(model),
                "--workers", "0", "--device", "cpu"]) == 0
    got = assert_accounted(out / B.OUTPUT_JSON, data)
    assert (got[1]["status"], got[1]["reason"]) == ("kept", "guard_collapsed") and "kept" in got[1]["review"]
    assert got[1]["guard"] == {"reason": "collapsed", "edges": ["left", "top", "right", "bottom"]}
    assert got[2]["status"] == "snapped" and got[2]["guard"] == {"reason": "moved", "edges": ["bottom"]}
    assert "guarded:bottom" in got[2]["review"] and got[2]["needs_review"]
    assert got[3]["status"] == "snapped" and got[3]["guard"] is None
    snapped = {a["id"]: a["bbox"] for a in json.loads((out / B.OUTPUT_JSON).read_text())["annotations"]}
    assert snapped[1] == CROSSED and snapped[2][3] == pytest.approx(MOVED[3])
    summary = json.loads((out / B.SUMMARY_JSON).read_text())
    assert summary["reasons"] == {"guard_collapsed": 1} and summary["status"] == {"snapped": 2, "kept": 1}
    assert summary["guard"] == {"collapsed": 1, "moved": 1, "edges": {"left": 0, "top": 0, "right": 0, "bottom": 1}}
    assert summary["review_reasons"]["guarded"] == 1
    rows = pd.read_parquet(out / B.BOXES_PARQUET).set_index("annotation_id")
    assert rows.loc[2, "guarded_edges"] == "bottom" and rows.loc[1, "reason"] == "guard_collapsed"
    # guard off: another result (not the cached chunk), the crossed box snapped 1 px wide
    res = B.batch_snap(tmp_path / "rough.json", images, tmp_path / "off", model, fast_config(guard=False))
    assert res.summary["status"] == {"snapped": 3, "kept": 0} and res.summary["guard"]["collapsed"] == 0


def test_served_model_answers_a_guard_column(model: Path, tmp_path: Path) -> None:
    b64 = encode_image(_image(tmp_path / "a.png"))
    rows = pd.DataFrame([{"image_b64": b64, "x": b[0], "y": b[1], "w": b[2], "h": b[3]} for b in (CROSSED, MOVED, PLAIN)])
    out = snap_rows(Snapper.from_checkpoint(model, device="cpu"), rows)
    assert out["guard"].tolist() == ["collapsed", "moved:bottom", ""]
    assert out.loc[0, ["x", "y", "w", "h"]].tolist() == pytest.approx(CROSSED)
    assert (out[["w", "h"]].to_numpy() >= 2).all()


def test_label_studio_meta_carries_the_guard(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "root" / "images").mkdir(parents=True)
    _image(tmp_path / "root" / "images" / "a.png")
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(tmp_path / "root"))
    for var in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        monkeypatch.delenv(var, raising=False)
    client = create_app(SnapperBackend(Snapper.from_checkpoint(model, device="cpu"), "tiny/test")).test_client()
    regions = [{"id": f"r{i}", "from_name": "label", "to_name": "image", "type": "rectanglelabels",
                "value": {"x": b[0] / W * 100, "y": b[1] / H * 100, "width": b[2] / W * 100, "height": b[3] / H * 100,
                          "rotation": 0, "rectanglelabels": ["Car"]}} for i, b in enumerate((CROSSED, MOVED, PLAIN))]
    task = {"id": 1, "data": {"image": "/data/local-files/?d=images/a.png"},
            "annotations": [{"result": regions}], "predictions": []}
    r = client.post("/predict", json={"tasks": [task]})
    assert r.status_code == 200, r.get_json()
    metas = {res["meta"]["rough_id"]: res for res in r.get_json()["results"][0]["result"]}
    assert metas["r0"]["meta"]["guard"]["reason"] == "collapsed" and metas["r2"]["meta"]["guard"] is None
    assert metas["r1"]["meta"]["guard"] == {"reason": "moved", "edges": ["bottom"]}
    assert metas["r0"]["value"]["width"] == pytest.approx(CROSSED[2] / W * 100)


def test_evaluate_scores_the_guarded_boxes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Snapper, "predict_crops", crafted)
    monkeypatch.setattr(Snapper, "all_crossed", True, raising=False)
    shards = make_tiny_shards(tmp_path / "shards")["val"]
    ckpt = tiny_checkpoint(tmp_path / "tiny")
    res = evaluate({"snapper": str(ckpt)}, EvalConfig(shards=shards, snap=SnapSettings(device="cpu", batch_size=4)),
                   tmp_path / "eval", plots=False)
    df = pd.read_parquet(res.parquet)
    model, ident = df[df["method"] == "snapper"], df[df["method"] == IDENTITY]
    assert len(model) and (model["guard"] == "collapsed").all()
    assert (model[["pred_w", "pred_h"]].to_numpy() >= 2).all()  # no collapsed box scored
    np.testing.assert_allclose(model["iou"].to_numpy(), ident["iou"].to_numpy())  # the rough boxes, guarded
    assert res.metrics["snapper/guard/collapsed"] == len(model)
