"""Image loading: every mode becomes RGB, EXIF orientation applies, JPEG fast paths give PIL's
pixels, reduced-scale decodes report their exact scale, bad files are named."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from snapper import imageio
from snapper.imageio import ImageError, ImageTooLarge, dct_scale, image_size, load_image

BG, FG = 20, 230


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


def test_dct_scale_is_exact_for_sizes_k_does_not_divide():
    h, w = 427, 301  # odd: decoded sizes are ceil(n / k)
    arr = np.full((h, w, 3), BG, np.uint8)
    arr[:400] = FG
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    for k in (2, 4, 8):
        li = load_image(data, min_scale=1.0 / k - 1e-3)
        dh, dw = li.tensor.shape[1:]
        if dh == h:
            continue  # PIL chose a finer scale than asked: nothing to check
        kk = round(h / dh)
        sy = dct_scale(dh, h)
        assert sy == 1.0 / kk != dh / h
        col = li.tensor.float().mean(0)[:, dw // 2].numpy()
        bright_rows = ((col - BG) / (FG - BG)).clip(0, 1).sum()  # where the edge lies, decoded px
        assert abs(bright_rows - 400 * sy) < 0.1 and abs(400 * sy - 400 * dh / h) > 0.2


def test_pixel_budget_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    arr = np.full((300, 400, 3), 90, np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.png")
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=95)
    calls = []
    monkeypatch.setattr(imageio, "_decode_pil", lambda *a: calls.append(a) or pytest.fail("decoded"))
    monkeypatch.setattr(imageio, "_decode_jpeg_full", lambda *a: calls.append(a) or pytest.fail("decoded"))
    for name in ("big.png", "big.jpg"):
        with pytest.raises(ImageTooLarge, match=rf"{name}: 400x300 is 120,000 pixels to decode, over the budget of 100,000") as e:
            load_image(tmp_path / name, max_pixels=100_000)
        assert e.value.reason == "image_too_large" and isinstance(e.value, ImageError)
    assert not calls
    monkeypatch.undo()
    # the budget counts decoded pixels: a JPEG whose crops allow a 1/4 draft fits
    li = load_image(tmp_path / "big.jpg", min_scale=0.25, max_pixels=100_000)
    assert tuple(li.tensor.shape) == (3, 75, 100) and (li.width, li.height) == (400, 300)
    assert load_image(tmp_path / "big.png", max_pixels=None).tensor.shape == (3, 300, 400)


def test_a_tiny_file_that_would_decode_to_100_megapixels_is_refused(tmp_path):
    Image.new("1", (10000, 10000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 50_000
    with pytest.raises(ImageTooLarge, match="bomb.png: 10000x10000 is 100,000,000 pixels"):
        load_image(tmp_path / "bomb.png")  # default budget: 64 MP


def test_a_truncated_jpeg_is_named_once(tmp_path):
    arr = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    path = tmp_path / "cut.jpg"
    Image.fromarray(arr).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert str(e.value).count("cut.jpg") == 1 and "truncated" in str(e.value)
