import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapper.config import JitterConfig
from snapper.geometry import (
    box_problem,
    jitter_boxes,
    jitter_by_annotation,
    paired_iou,
    validate_box,
    xywh_to_xyxy,
    xyxy_to_xywh,
)


def test_conversions_round_trip():
    b = np.array([[10, 20, 30, 40], [0.5, 0.25, 1.0, 2.0]])
    assert np.allclose(xyxy_to_xywh(xywh_to_xyxy(b)), b)
    assert xywh_to_xyxy(b)[0].tolist() == [10, 20, 40, 60]


def test_paired_iou_matches_torchvision():
    import torch
    from torchvision.ops import box_iou

    rng = np.random.default_rng(0)
    a = xywh_to_xyxy(np.c_[rng.uniform(0, 50, (20, 2)), rng.uniform(1, 50, (20, 2))])
    b = xywh_to_xyxy(np.c_[rng.uniform(0, 50, (20, 2)), rng.uniform(1, 50, (20, 2))])
    ref = box_iou(torch.tensor(a), torch.tensor(b)).diagonal().numpy()
    assert np.allclose(paired_iou(a, b), ref)


@pytest.mark.parametrize(
    "box, reason",
    [
        ([1, 2, 0, 5], "degenerate"),
        ([1, 2, 5, -1], "degenerate"),
        ([float("nan"), 2, 5, 5], "non_finite"),
        ([1, 2, float("inf"), 5], "non_finite"),
        ([200, 2, 5, 5], "outside_image"),
        ([-10, 2, 5, 5], "outside_image"),
        ([1, 2, 3], "malformed"),
        ([90, 90, 50, 50], None),  # partly outside: usable (clipped by callers)
    ],
)
def test_box_problems(box, reason):
    assert box_problem(box, 100, 100) == reason


def test_validate_box_names_the_box():
    with pytest.raises(ValueError, match="annotation 7.*degenerate"):
        validate_box([0, 0, 0, 1], 10, 10, name="annotation 7")


def test_jitter_follows_the_protocol():
    rng = np.random.default_rng(0)
    true = np.tile([[100.0, 100.0, 200.0, 150.0]], (20000, 1))
    rough = jitter_boxes(true, 1000, 1000, rng)
    w, h = 100.0, 50.0
    cx = (rough[:, 0] + rough[:, 2]) / 2
    cy = (rough[:, 1] + rough[:, 3]) / 2
    rw = (rough[:, 2] - rough[:, 0]) / w
    rh = (rough[:, 3] - rough[:, 1]) / h
    assert np.abs(cx - 150).max() <= 0.1 * w + 1e-9 and np.abs(cy - 125).max() <= 0.1 * h + 1e-9
    assert rw.min() >= 0.9 - 1e-9 and rw.max() <= 1.1 + 1e-9
    assert np.allclose(rw, rh)  # one shared ratio by default
    assert abs(np.std(cx - 150) - 0.2 * w / np.sqrt(12)) < 0.2  # uniform in +/-10%
    free = jitter_boxes(true, 1000, 1000, rng, JitterConfig(shared_ratio=False))
    assert not np.allclose((free[:, 2] - free[:, 0]) / w, (free[:, 3] - free[:, 1]) / h)


def test_jitter_clips_to_image():
    rng = np.random.default_rng(1)
    rough = jitter_boxes(np.tile([[0.0, 0.0, 50.0, 40.0]], (500, 1)), 50, 40, rng)
    assert rough.min() >= 0 and rough[:, 2].max() <= 50 and rough[:, 3].max() <= 40


def test_deterministic_jitter_depends_only_on_annotation_id():
    boxes = np.array([[10, 10, 60, 50], [5, 5, 25, 45]], dtype=float)
    a = jitter_by_annotation(boxes, [11, 12], 100, 100)
    b = jitter_by_annotation(boxes[::-1], [12, 11], 100, 100)[::-1]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, jitter_by_annotation(boxes, [11, 12], 100, 100, seed=1))


@settings(max_examples=50, deadline=None)
@given(st.floats(0, 500), st.floats(0, 500), st.floats(1, 300), st.floats(1, 300), st.integers(0, 2**31))
def test_jitter_stays_near_the_box(x, y, w, h, seed):
    true = np.array([[x, y, x + w, y + h]])
    rough = jitter_boxes(true, 1e4, 1e4, np.random.default_rng(seed))
    assert paired_iou(rough, true)[0] > 0.6
