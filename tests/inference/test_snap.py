"""The snap API and CLI on odd images and bad boxes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from snapper import batch as B
from snapper.cli import main as cli
from snapper.config import ModelConfig, SnapSettings
from snapper.inference.snap import Snapper
from snapper.models.checkpoint import copy_checkpoint, save_checkpoint
from snapper.models.net import build_model
from tests.batchdata import fast_config, make_rough, tiny_checkpoint

TINY = ModelConfig(trunk="resnet18", input_size=48, fpn_channels=16, decoder_channels=16, decoder_layers=2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny"
    save_checkpoint(path, build_model(TINY), TINY)
    return path


def test_snap_returns_boxes_and_confidence(ckpt, photo):
    s = Snapper.from_checkpoint(ckpt, device="cpu")
    r = s.snap(photo, [[18, 12, 55, 26], [0, 0, 90, 60]])
    assert r.boxes.shape == (2, 4) and r.confidence.shape == (2, 4)
    assert ((r.confidence >= 0) & (r.confidence <= 1)).all()
    x, y, w, h = r.boxes.T
    assert (w >= 1).all() and (h >= 1).all() and (x >= 0).all() and (x + w <= 90 + 1e-9).all() and (y + h <= 60 + 1e-9).all()
    assert s.snap(photo, []).boxes.shape == (0, 4)


def test_reduced_precision_inference_agrees_with_fp32(ckpt, photo):
    """bf16 autocast (the default on GPUs that have it; testable on CPU) changes little."""
    boxes = [[18, 12, 55, 26], [0, 0, 90, 60]]
    ref = Snapper.from_checkpoint(ckpt, device="cpu", precision="fp32").snap(photo, boxes)
    low = Snapper.from_checkpoint(ckpt, device="cpu", precision="bf16")
    assert low.autocast_dtype == torch.bfloat16
    r = low.snap(photo, boxes)
    assert np.isfinite(r.boxes).all() and np.abs(r.confidence - ref.confidence).max() < 0.05
    assert Snapper.from_checkpoint(ckpt, device="cpu").autocast_dtype is None  # auto on CPU: fp32
    with pytest.raises(ValueError, match="precision"):
        Snapper.from_checkpoint(ckpt, device="cpu", precision="fp8")


def test_memory_format_switch_changes_speed_not_boxes(ckpt, photo):
    """channels_last=False keeps NCHW where the device policy picks NHWC; the boxes agree."""
    boxes = [[18, 12, 55, 26], [0, 0, 90, 60]]
    nhwc = Snapper.from_checkpoint(ckpt, device="cpu")
    nchw = Snapper.from_checkpoint(ckpt, device="cpu", channels_last=False)
    assert nhwc.channels_last and not nchw.channels_last
    assert next(p for p in nchw.model.parameters() if p.dim() == 4).is_contiguous()
    assert next(p for p in nhwc.model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    a, b = nhwc.snap(photo, boxes), nchw.snap(photo, boxes)
    assert np.abs(a.boxes - b.boxes).max() < 1e-3 and np.abs(a.confidence - b.confidence).max() < 1e-4


@pytest.mark.parametrize(
    "box, reason",
    [([10, 10, 0, 5], "degenerate"), ([10, 10, -3, 5], "degenerate"), ([np.nan, 1, 2, 3], "non_finite"),
     ([500, 10, 5, 5], "outside_image"), ([10, 10, np.inf, 5], "non_finite")],
)
def test_bad_boxes_are_named(ckpt, photo, box, reason):
    s = Snapper.from_checkpoint(ckpt, device="cpu")
    with pytest.raises(ValueError, match=rf"box 1 .*{reason}"):
        s.snap(photo, [[10, 10, 20, 20], box])


def test_cli_prints_json_and_draws(ckpt, photo, tmp_path, capsys):
    out = tmp_path / "overlay.png"
    rc = cli(["snap", str(photo), "--box", "18,12,55,26", "--model", str(ckpt), "--out", str(out)])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["boxes"]) == 1 and set(data["boxes"][0]["confidence"]) == {"left", "top", "right", "bottom"}
    assert Image.open(out).size == (90, 60)
    assert cli(["snap", str(photo), "--box", "1,1,0,4", "--model", str(ckpt)]) == 2
    assert "degenerate" in capsys.readouterr().err


def test_snapping_and_batch_jobs_read_boxes_out_through_one_method(ckpt, photo, tmp_path, monkeypatch):
    """predict -> original pixels -> (second pass) is Snapper.read_out, for one image and for the
    cross-image batches of a batch job alike; the settings object carries every read-out option."""
    calls: list[int] = []
    original = Snapper.read_out

    def spy(self, crops, *args, **kwargs):
        calls.append(len(crops))
        return original(self, crops, *args, **kwargs)

    monkeypatch.setattr(Snapper, "read_out", spy)
    s = Snapper.from_checkpoint(ckpt, SnapSettings(device="cpu", buffer_ratio=1.2))
    assert s.settings.buffer_ratio == 1.2 and s.with_settings(buffer_ratio=1.2) is s
    r = s.snap(photo, [[18, 12, 55, 26], [20, 10, 20, 20]])
    assert calls == [2] and r.boxes.shape == (2, 4)
    wider = s.with_settings(buffer_ratio=1.5)
    assert wider.model is s.model and wider.settings.buffer_ratio == 1.5 and s.settings.buffer_ratio == 1.2
    np.testing.assert_allclose(wider.snap(photo, [[18, 12, 55, 26]]).boxes, s.snap(photo, [[18, 12, 55, 26]],
                                                                                      buffer_ratio=1.5).boxes)
    with pytest.raises(ValueError, match="device"):
        s.with_settings(device="cuda")  # moves the model: a new Snapper
    calls.clear()
    ann, images, _ = make_rough(tmp_path / "in")
    res = B.batch_snap(ann, images, tmp_path / "o", tiny_checkpoint(tmp_path / "ck"), fast_config(batch_size=3))
    assert calls and max(calls) <= 3 and sum(calls) == res.summary["status"]["snapped"]


@pytest.mark.parametrize("passes", [1, 2])
def test_a_calibrated_model_gives_the_mapped_confidence_in_both_passes(tmp_path, photo, passes):
    """Raw confidence through the stored knots, first pass and zoom-in pass alike, and mapped once."""
    torch.manual_seed(0)
    cfg = ModelConfig(trunk="resnet18", input_size=32, fpn_channels=8, decoder_channels=8, decoder_layers=1,
                      zoom=True)
    raw_ck = save_checkpoint(tmp_path / "raw", build_model(cfg), cfg)
    knots = [[0.0, 0.02, 1.0], [0.2, 0.3, 0.9]]
    cal_ck = copy_checkpoint(raw_ck, tmp_path / "cal", ModelConfig(**{**cfg.__dict__, "calibration": knots}))
    boxes = [[18, 12, 55, 26], [0, 0, 90, 60]]  # crops coarse enough (> 1.5 px per input px) for the zoom-in pass
    raw = Snapper.from_checkpoint(raw_ck, device="cpu", passes=passes).snap(photo, boxes)
    cal = Snapper.from_checkpoint(cal_ck, device="cpu", passes=passes).snap(photo, boxes)
    np.testing.assert_array_equal(cal.boxes, raw.boxes)
    np.testing.assert_allclose(cal.confidence, np.interp(raw.confidence, *knots))


@pytest.mark.parametrize("passes", [1, 2])
def test_a_per_size_calibration_maps_each_box_by_its_rough_box(tmp_path, passes):
    """A small, a medium and a large rough box on one image: each box's edges, first pass and
    zoom-in pass alike, through its own bucket's knots (medium has none: the map for every box)."""
    torch.manual_seed(0)
    cfg = ModelConfig(trunk="resnet18", input_size=32, fpn_channels=8, decoder_channels=8, decoder_layers=1,
                      zoom=True)
    raw_ck = save_checkpoint(tmp_path / "raw", build_model(cfg), cfg)
    maps = {"all": [[0.0, 1.0], [0.3, 0.4]], "small": [[0.0, 1.0], [0.5, 0.6]], "large": [[0.0, 1.0], [0.8, 0.9]]}
    cal_ck = copy_checkpoint(raw_ck, tmp_path / "cal", ModelConfig(**{**cfg.__dict__, "calibration": maps}))
    arr = np.zeros((120, 160, 3), dtype=np.uint8)
    arr[30:90, 40:130] = (200, 100, 50)
    image = tmp_path / "wide.png"
    Image.fromarray(arr).save(image)
    boxes = [[50, 40, 20, 20], [40, 30, 90, 60], [0, 0, 160, 120]]  # areas 400, 5,400, 19,200: small, medium, large
    raw = Snapper.from_checkpoint(raw_ck, device="cpu", passes=passes).snap(image, boxes)
    cal = Snapper.from_checkpoint(cal_ck, device="cpu", passes=passes).snap(image, boxes)
    np.testing.assert_array_equal(cal.boxes, raw.boxes)
    for row, bucket in zip(range(3), ("small", "all", "large")):
        np.testing.assert_allclose(cal.confidence[row], np.interp(raw.confidence[row], *maps[bucket]))
