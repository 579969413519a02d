import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snapper.crop import (
    CropGeometry,
    crop_images,
    crop_to_input,
    crop_to_original,
    crop_windows,
    cut_crops,
    decode_scale,
    edge_targets,
    input_to_crop,
    input_to_original,
    original_to_crop,
    original_to_input,
)

coord = st.floats(-1e3, 5e3, allow_nan=False)
extent = st.floats(0.5, 3e3, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(coord, coord, extent, extent, st.floats(0.5, 3.0), st.floats(1.0, 2.5), st.sampled_from([32, 64, 128, 256, 320]),
       st.lists(st.floats(-2e3, 6e3, allow_nan=False), min_size=4, max_size=4))
def test_round_trips_are_exact(x, y, w, h, buffer_ratio, context, size, pts):
    rough = np.array([[x, y, x + w, y + h]])
    win = crop_windows(rough, buffer_ratio, context)
    p = np.array([pts])
    assert np.allclose(input_to_original(original_to_input(p, win, size), win, size), p, atol=1e-3, rtol=0)
    assert np.allclose(crop_to_original(original_to_crop(p, win), win), p, atol=1e-3, rtol=0)
    assert np.allclose(input_to_crop(crop_to_input(p, win, size), win, size), p, atol=1e-3, rtol=0)
    # The rough box lands at the same place of every crop, whatever its size: 1/context of it.
    r_in = original_to_input(rough, win, size)
    lo = size * (1 - 1 / (buffer_ratio * context)) / 2
    if w * buffer_ratio * context >= 1 and h * buffer_ratio * context >= 1:
        assert np.allclose(r_in, [[lo, lo, size - lo, size - lo]], atol=1e-3)


def test_buffer_ratio_scales_about_the_centre():
    rough = np.array([[100.0, 50.0, 200.0, 90.0]])
    w1 = crop_windows(rough, 1.0, 1.0)
    w2 = crop_windows(rough, 2.0, 1.0)
    assert np.allclose(w1, rough)
    assert np.allclose(w2, [[50, 30, 250, 110]])
    # one ratio per box (training draws them) is each box cut with its own ratio
    both = crop_windows(np.repeat(rough, 2, axis=0), np.array([1.0, 2.0]), 1.0)
    assert np.allclose(both, np.concatenate([w1, w2]))
    with pytest.raises(ValueError, match="buffer_ratio"):
        crop_windows(np.repeat(rough, 2, axis=0), np.array([1.0, 0.0]), 1.0)


def test_targets_are_clipped_to_the_crop():
    win = np.array([[0.0, 0.0, 100.0, 100.0]])
    t = edge_targets(np.array([[-20.0, 10.0, 150.0, 50.0]]), win, 64)
    assert t.tolist() == [[0.0, 6.4, 64.0, 32.0]]


def test_crop_content_matches_mapping_and_pads_outside():
    img = torch.zeros(3, 60, 80)
    img[:, 10:30, 20:60] = 255.0  # box x 20..60, y 10..30
    true = np.array([[20.0, 10.0, 60.0, 30.0]])
    win = np.array([[-20.0, 0.0, 100.0, 40.0]])  # extends past the left and right of the image
    crop = crop_images(img, win, 120)
    assert crop.shape == (1, 3, 120, 120)
    t = edge_targets(true, win, 120)[0]  # [40, 30, 80, 90]
    row = crop[0, 0, 60]
    bright = torch.nonzero(row > 127).flatten()
    assert abs(bright.min().item() - t[0]) <= 1 and abs(bright.max().item() + 1 - t[2]) <= 1
    assert row[:15].abs().max() == 0  # left of the image: zero padding


def test_reduced_scale_decode_maps_to_the_same_place():
    full = torch.zeros(1, 80, 80)
    full[:, 20:60, 20:60] = 255.0
    half = torch.nn.functional.avg_pool2d(full.unsqueeze(0), 2)[0]
    win = np.array([[10.0, 10.0, 70.0, 70.0]])
    a = crop_images(full, win, 30)
    b = crop_images(half, win, 30, image_scale=(0.5, 0.5))
    assert torch.allclose(a, b, atol=1.0)


def test_decode_scale():
    assert decode_scale(np.array([[0, 0, 320, 320], [0, 0, 64, 256]]), 32) == 0.5
    assert decode_scale(np.array([[0, 0, 10, 10]]), 32) == 1.0


def test_cut_crops_equals_roi_align_crop_images():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.integers(0, 256, (3, 47, 61), dtype=np.uint8))
    wins = np.array([
        [3.3, 5.7, 58.9, 43.2],  # downscaled (several samples per bin)
        [-20.5, -10.2, 6.1, 3.3],  # mostly outside, top-left
        [55.2, 40.1, 70.9, 52.7],  # past the bottom-right
        [10.0, 10.0, 12.5, 11.0],  # tiny: upscaled
        [100.0, 100.0, 120.0, 130.0],  # misses the image entirely
        [-30.0, -30.0, 90.0, 80.0],  # larger than the image
    ])
    for size in (16, 8):
        for scale in ((1.0, 1.0), (0.5, 0.25)):
            ref = crop_images(img, wins, size, scale)
            got = cut_crops(img, wins, size, scale)
            assert got.shape == ref.shape
            torch.testing.assert_close(got, ref, atol=0.05, rtol=0)
            mirror = np.array([True, False, True, True, False, True])
            got = cut_crops(img, wins, size, scale, mirror=mirror)
            torch.testing.assert_close(got[mirror], ref[mirror].flip(-1), atol=0.05, rtol=0)
            torch.testing.assert_close(got[~mirror], ref[~mirror], atol=0.05, rtol=0)


def test_crop_geometry_is_the_whole_round_trip() -> None:
    """Windows, per-edge scale, targets and the inverse map agree with the functions they wrap;
    tidying clips to each box's own image size."""
    rough = np.array([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 8.0, 100.0]])
    true = rough + np.array([[-2.0, 1.0, 3.0, -1.0], [1.0, 2.0, 2.0, 5.0]])
    geo = CropGeometry.around(rough, 64, context=1.4, buffer_ratio=1.2)
    np.testing.assert_allclose(geo.windows, crop_windows(rough, 1.2, 1.4))
    sx = (geo.windows[:, 2] - geo.windows[:, 0]) / 64
    np.testing.assert_allclose(geo.edge_scale[:, [0, 2]], np.stack([sx, sx], 1))
    np.testing.assert_allclose(geo.targets(true), edge_targets(true, geo.windows, 64))
    np.testing.assert_allclose(geo.to_original(geo.to_input(true)), true, atol=1e-9)
    tidy = geo.to_original(geo.to_input(true), np.array([45.0, 9.0]), np.array([100.0, 100.0]))
    assert tidy[0, 2] == 45.0 and tidy[1, 2] == 9.0  # each box clipped to its own image
    assert len(geo[1:]) == 1 and len(CropGeometry.concat([geo, geo[:1]])) == 3
    assert geo.decode_scale() == decode_scale(geo.windows, 64)
    img = torch.randint(0, 255, (3, 120, 90), dtype=torch.uint8)
    torch.testing.assert_close(geo.cut(img), crop_images(img, geo.windows, 64), atol=5e-3, rtol=0)
    mirrored = geo.cut(img, mirror=np.array([True, False]))
    torch.testing.assert_close(mirrored[0], geo.cut(img)[0].flip(-1), atol=1e-3, rtol=0)

