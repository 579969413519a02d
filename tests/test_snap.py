"""The snap API and CLI on odd images and bad boxes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from snapper.checkpoint import save_checkpoint
from snapper.cli import main as cli
from snapper.config import ModelConfig
from snapper.imageio import ImageError, image_size, load_image
from snapper.model import build_model
from snapper.snap import Snapper

TINY = ModelConfig(backbone="resnet18", input_size=48, fpn_channels=16, decoder_channels=16, decoder_layers=2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny"
    save_checkpoint(path, build_model(TINY), TINY)
    return path


@pytest.fixture
def photo(tmp_path):
    arr = np.zeros((60, 90, 3), dtype=np.uint8)
    arr[10:40, 20:70] = (200, 100, 50)
    path = tmp_path / "photo.jpg"
    Image.fromarray(arr).save(path, quality=95)
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


@pytest.mark.parametrize(
    "box, reason",
    [([10, 10, 0, 5], "degenerate"), ([10, 10, -3, 5], "degenerate"), ([np.nan, 1, 2, 3], "non_finite"),
     ([500, 10, 5, 5], "outside_image"), ([10, 10, np.inf, 5], "non_finite")],
)
def test_bad_boxes_are_named(ckpt, photo, box, reason):
    s = Snapper.from_checkpoint(ckpt, device="cpu")
    with pytest.raises(ValueError, match=rf"box 1 .*{reason}"):
        s.snap(photo, [[10, 10, 20, 20], box])


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "1"])
def test_image_modes_become_rgb(tmp_path, mode):
    im = Image.new("RGB", (40, 30), (120, 60, 30)).convert(mode if mode != "I;16" else "I")
    ext = "tif" if mode in ("CMYK", "I;16") else "png"
    path = tmp_path / f"im.{ext}"
    im.save(path)
    loaded = load_image(path)
    assert loaded.tensor.shape == (3, 30, 40) and loaded.tensor.dtype == torch.uint8


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg_fast_decode_gives_pils_pixels(tmp_path, mode):
    """Full-scale JPEGs skip PIL's decoder; the pixels must be the ones PIL gives."""
    rng = np.random.default_rng(3)
    im = Image.fromarray((rng.random((37, 53, 3)) * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / "im.jpg"
    im.save(path, quality=90)
    want = np.array(Image.open(path).convert("RGB"))
    for source in (path, path.read_bytes(), Image.open(path)):
        got = load_image(source).tensor.permute(1, 2, 0).numpy()
        assert got.shape == want.shape and np.array_equal(got, want)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 50, 3), dtype=np.uint8)
    arr[:, :10] = 255  # bright stripe on the left of the stored pixels
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif, quality=95)
    loaded = load_image(path)
    assert (loaded.width, loaded.height) == (20, 50) == image_size(path)
    assert loaded.tensor.shape == (3, 50, 20)
    assert loaded.tensor[:, :10].float().mean() > 200  # the stripe is now on top
    half = load_image(path, min_scale=0.5)
    assert (half.width, half.height) == (20, 50) and half.scale == pytest.approx((0.5, 0.5), abs=0.06)


def test_corrupt_missing_and_tiny_images_are_named(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="bad.jpg"):
        load_image(bad)
    with pytest.raises(ImageError, match="nope.jpg.*not found"):
        load_image(tmp_path / "nope.jpg")
    trunc = tmp_path / "trunc.jpg"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(trunc)
    trunc.write_bytes(trunc.read_bytes()[:200])
    with pytest.raises(ImageError, match="trunc.jpg"):
        load_image(trunc)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 5)).save(tiny)
    with pytest.raises(ImageError, match="too small"):
        load_image(tiny)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_decompression_bomb_limit_is_kept(tmp_path, monkeypatch, ext):
    path = tmp_path / f"big.{ext}"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="refused"):
        load_image(path)


def test_cli_prints_json_and_draws(ckpt, photo, tmp_path, capsys):
    out = tmp_path / "overlay.png"
    rc = cli(["snap", str(photo), "--box", "18,12,55,26", "--checkpoint", str(ckpt), "--out", str(out)])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["boxes"]) == 1 and set(data["boxes"][0]["confidence"]) == {"left", "top", "right", "bottom"}
    assert Image.open(out).size == (90, 60)
    assert cli(["snap", str(photo), "--box", "1,1,0,4", "--checkpoint", str(ckpt)]) == 2
    assert "degenerate" in capsys.readouterr().err
