"""Edge distributions: soft targets, loss, decoding and confidence agree with each other."""

import numpy as np
import pytest
import torch

from snapper.models.edges import (
    calibrate_confidence,
    calibration_buckets,
    decode_edges,
    edge_loss,
    mass_within,
    soft_targets,
)


def test_soft_targets_decode_back_exactly():
    pos = torch.tensor([[0.0, 0.25, 63.6, 64.0], [10.5, 31.01, 40.99, 12.0]])
    q = soft_targets(pos, 64, 65)
    assert torch.allclose(q.sum(-1), torch.ones(2, 4))
    logits = torch.log(q.clamp_min(1e-9))
    dec, conf = decode_edges(logits, 64, window=2, tolerance=2.0)
    assert torch.allclose(dec, pos, atol=1e-4)
    assert (conf > 0.99).all()
    # The loss of the perfect distribution is its entropy: lower than any shifted one.
    assert edge_loss(logits, pos, 64) < edge_loss(logits, pos + 2, 64)


def test_confidence_is_low_for_spread_distributions():
    sharp = torch.zeros(1, 4, 65)
    sharp[..., 30] = 20
    flat = torch.zeros(1, 4, 65)
    _, c_sharp = decode_edges(sharp, 64)
    _, c_flat = decode_edges(flat, 64)
    assert (c_sharp > 0.99).all() and (c_flat < 0.1).all()


def test_confidence_is_the_probability_of_being_within_tolerance():
    p = torch.zeros(1, 4, 65)
    p[..., 30] = 1.0  # all mass in the bin of position 30, which covers [29.5, 30.5)
    pos = torch.full((1, 4), 30.0)
    assert torch.allclose(mass_within(p, pos, 64, torch.full((1, 4), 0.5)), torch.ones(1, 4))
    assert torch.allclose(mass_within(p, pos, 64, torch.full((1, 4), 0.25)), torch.full((1, 4), 0.5))
    assert torch.allclose(mass_within(p, pos + 3, 64, torch.full((1, 4), 2.0)), torch.zeros(1, 4))
    flat = torch.full((1, 4, 65), 1 / 65)
    assert torch.allclose(mass_within(flat, pos, 64, torch.full((1, 4), 2.0)), torch.full((1, 4), 4 / 65))


# ------------------------------------------------------------------ calibration read-out

SMALL_AREA, MEDIUM_AREA, LARGE_AREA = 20.0 * 20, 60.0 * 60, 200.0 * 200  # COCO buckets, original px^2
ALL_MAP = [[0.0, 1.0], [0.0, 1.0]]  # identity
SMALL_MAP = [[0.0, 1.0], [0.5, 1.0]]  # 0.6 -> 0.8
LARGE_MAP = [[0.0, 1.0], [0.0, 0.5]]  # 0.6 -> 0.3


def test_a_small_and_a_large_box_with_the_same_confidence_read_their_own_maps():
    per_size = {"all": ALL_MAP, "small": SMALL_MAP, "large": LARGE_MAP}  # medium: no map of its own
    conf = np.full((5, 4), 0.6)
    conf[4, 1] = np.nan  # no confidence stays none
    area = np.array([SMALL_AREA, LARGE_AREA, MEDIUM_AREA, np.nan, SMALL_AREA])  # NaN area: no rough box known
    out = calibrate_confidence(conf, per_size, area)
    np.testing.assert_allclose(out[:4], [[0.8] * 4, [0.3] * 4, [0.6] * 4, [0.6] * 4])
    np.testing.assert_allclose(out[4], [0.8, np.nan, 0.8, 0.8])
    # the thresholds are COCO's, on the rough box's area: 32^2 is already medium, 96^2 already large
    np.testing.assert_allclose(calibrate_confidence(np.full(3, 0.6), per_size, np.array([32**2 - 1, 32**2, 96**2])),
                               [0.8, 0.6, 0.3])
    assert list(calibration_buckets([1023, 1024, 9215, 9216, np.inf])) == ["small", "medium", "medium", "large", "all"]
    # without areas every box reads "all"; strips (K,) take one area each
    np.testing.assert_allclose(calibrate_confidence(conf[:2], per_size), conf[:2])
    np.testing.assert_allclose(calibrate_confidence(np.array([0.6, 0.6]), per_size, np.array([SMALL_AREA, LARGE_AREA])),
                               [0.8, 0.3])
    with pytest.raises(ValueError, match="shape"):
        calibrate_confidence(conf, per_size, np.ones(3))


def test_one_map_reads_as_before_whatever_the_box_size():
    knots = [[0.0, 0.5, 1.0], [0.1, 0.4, 0.9]]  # the form every calibrated checkpoint had until now
    conf = np.array([[0.25, 0.5, 0.75, np.nan], [0.25, 0.5, 0.75, 1.0]])
    expected = np.interp(conf, *knots)
    np.testing.assert_allclose(calibrate_confidence(conf, knots), expected)
    np.testing.assert_allclose(calibrate_confidence(conf, knots, np.array([SMALL_AREA, LARGE_AREA])), expected)
    np.testing.assert_allclose(calibrate_confidence(conf, {"all": knots}, np.array([SMALL_AREA, LARGE_AREA])), expected)
    np.testing.assert_array_equal(calibrate_confidence(conf, None, np.array([SMALL_AREA, LARGE_AREA])), conf)
