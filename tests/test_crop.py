import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snapper.crop import (
    crop_images,
    crop_to_input,
    crop_to_original,
    crop_windows,
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
