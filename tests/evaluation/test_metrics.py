from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from snapper.evaluation.metrics import (
    box_table,
    confidence_report,
    format_table,
    metric_key,
    summarize,
    summary_metrics,
)
from snapper.geometry import CORNER_NAMES, EDGE_NAMES

# MLflow's rule for metric names (mlflow.utils.validation), Windows-safe variant (no colon).
MLFLOW_NAME = re.compile(r"^[/\w.\- ]*$")


def _mlflow_ok(name: str) -> bool:
    import posixpath

    return bool(MLFLOW_NAME.match(name)) and posixpath.normpath(name) == name and not name.startswith("/")


def test_box_table_values() -> None:
    true = np.array([[10.0, 20.0, 50.0, 60.0]])
    pred = np.array([[13.0, 20.5, 50.0, 64.0]])
    rough = np.array([[9.0, 19.0, 52.0, 61.0]])
    conf = np.array([[0.1, 0.2, 0.3, 0.4]])
    df = box_table(pred, true, image_id=[7], annotation_id=[42], category_id=[3], rough_xyxy=rough,
                   confidence=conf, method="m", extra={"dataset": ["d"]})
    r = df.iloc[0]
    assert (r["image_id"], r["annotation_id"], r["category_id"], r["method"], r["dataset"]) == (7, 42, 3, "m", "d")
    assert [r[f"true_{c}"] for c in "xywh"] == [10, 20, 40, 40]
    assert [r[f"pred_{c}"] for c in "xywh"] == [13, 20.5, 37, 43.5]
    assert [r[f"rough_{c}"] for c in "xywh"] == [9, 19, 43, 42]
    assert [r[f"dev_{e}"] for e in EDGE_NAMES] == [3.0, 0.5, 0.0, 4.0]
    np.testing.assert_allclose([r[f"dev_{c}"] for c in CORNER_NAMES],
                               [np.hypot(3, 0.5), 0.5, 4.0, 5.0])
    inter = 37 * 39.5
    assert r["iou"] == pytest.approx(inter / (1600 + 37 * 43.5 - inter))
    assert [r[f"conf_{e}"] for e in EDGE_NAMES] == [0.1, 0.2, 0.3, 0.4]
    assert r["size"] == "medium" and r["area"] == 1600


def test_box_table_defaults_and_buckets() -> None:
    # w*h = 31*31 (small), 32*32 (exactly the small/medium bound -> medium), 96*96 (-> large)
    true = np.array([[0, 0, 31, 31], [0, 0, 32, 32], [0, 0, 96, 96]], dtype=float)
    df = box_table(true, true)
    assert list(df["size"]) == ["small", "medium", "large"]
    assert df["annotation_id"].isna().all() and df["conf_left"].isna().all() and df["rough_x"].isna().all()
    # COCO's segmentation area overrides the box area
    df = box_table(true, true, area=[2000.0, 10.0, 5000.0])
    assert list(df["size"]) == ["medium", "small", "medium"]


def test_box_table_rejects_bad_input() -> None:
    true = np.zeros((2, 4)) + [0, 0, 10, 10]
    with pytest.raises(ValueError, match="2"):
        box_table(true[:1], true)
    pred = true.copy()
    pred[1, 2] = np.nan
    with pytest.raises(ValueError, match="annotation 99"):
        box_table(pred, true, annotation_id=[98, 99])
    with pytest.raises(ValueError, match="clashes"):
        box_table(true, true, extra={"iou": [1, 2]})
    assert len(box_table(np.zeros((0, 4)), np.zeros((0, 4)))) == 0


def test_summarize_strict_thresholds_and_groups() -> None:
    true = np.array([[0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 10, 10]], dtype=float)
    # box 0: every edge exactly 1 px off (strict: not < 1); box 1 exact; box 2 (small) exact.
    pred = true + np.array([[-1, -1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    a = box_table(pred, true, method="a")
    b = box_table(true, true, method="b")
    s = summarize(pd.concat([a, b], ignore_index=True))
    assert list(zip(s["method"], s["size"])) == [("a", "all"), ("a", "small"), ("a", "large"),
                                               ("b", "all"), ("b", "small"), ("b", "large")]
    ra = s.iloc[0]
    assert ra["n_boxes"] == 3
    assert ra["edge_lt_1px"] == pytest.approx(100 * 8 / 12)
    assert ra["edge_lt_3px"] == 100
    assert ra["corner_lt_1px"] == pytest.approx(100 * 8 / 12)  # corner off by sqrt(2)
    assert ra["corner_lt_3px"] == 100
    assert ra["iou_gt_0.9"] == 100  # (100/102)^2 = 0.961
    assert ra["miou"] == pytest.approx(100 * (1 + 1 + (100 / 102) ** 2) / 3)
    assert ra["edge_dev_mean_px"] == pytest.approx(4 / 12) and ra["edge_dev_median_px"] == 0
    assert ra["left_lt_1px"] == pytest.approx(200 / 3)
    large_a = s[(s["method"] == "a") & (s["size"] == "large")].iloc[0]
    assert large_a["n_boxes"] == 2 and large_a["edge_lt_1px"] == 50
    rb = s.iloc[3]
    assert all(rb[c] == 100 for c in ["miou", "iou_gt_0.9", "edge_lt_1px", "corner_lt_1px"])
    nob = summarize(a, buckets=False)
    assert list(nob["size"]) == ["all"]
    with pytest.raises(ValueError, match="dataset"):
        summarize(a, by=("dataset",))


def test_format_table_and_metric_names() -> None:
    true = np.array([[0, 0, 100, 100], [0, 0, 10, 10]], dtype=float)
    df = pd.concat([box_table(true + 0.5, true, method="snap/v<2>"), box_table(true, true, method="rough")])
    s = summarize(df)
    md = format_table(s)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| method | size | boxes | mIoU | IoU>0.9 | edge <1px")
    assert len(lines) == 2 + len(s)
    one = summary_metrics(s.iloc[0])
    assert one["all/iou_gt_0.9"] == s.iloc[0]["iou_gt_0.9"] and one["all/n_boxes"] == 2
    many = summary_metrics(s, prefix="val")
    assert len(many) == len(s) * len(one)
    assert "val/rough/large/miou" in many
    assert all(_mlflow_ok(k) for k in many), [k for k in many if not _mlflow_ok(k)]
    assert metric_key("a//b", "../c", "x<1") == "a/b/c/x_1"


def test_confidence_report() -> None:
    rng = np.random.default_rng(0)
    n = 500
    true = np.tile([100.0, 100.0, 300.0, 300.0], (n, 1))
    dev = rng.exponential(2.0, size=(n, 4))
    pred = true + dev
    informative = box_table(pred, true, confidence=-dev, method="good")
    constant = box_table(pred, true, confidence=np.ones((n, 4)), method="const")
    none = box_table(pred, true, method="none")
    rep = confidence_report(pd.concat([informative, constant, none], ignore_index=True))
    dec = rep.deciles
    good = dec[dec["method"] == "good"]
    assert len(good) == 10 and good["n_edges"].sum() == 4 * n
    assert good["dev_mean_px"].is_monotonic_decreasing  # least confident bin is worst
    assert set(dec["method"]) == {"good", "const"}  # no confidence -> no rows
    fl = rep.flagging.set_index(["method", "flag_pct"])
    bad_share = fl.loc[("good", 30.0), "base_rate_pct"]
    assert bad_share == pytest.approx(100 * (dev >= 3).mean())
    # perfect ranking: flagging k% catches min(100, k / bad share) of the bad edges
    assert fl.loc[("good", 10.0), "caught_pct"] == pytest.approx(100 * 0.1 * 4 * n / (dev >= 3).sum(), abs=0.5)
    assert fl.loc[("good", 10.0), "lift"] > 2
    # constant confidence is no better than random flagging
    for k in (5.0, 10.0, 20.0, 30.0):
        assert abs(fl.loc[("const", k), "caught_pct"] - k) < 6


def test_the_share_made_worse_than_the_rough_box_is_reported():
    """A method that raises the averages can still break some boxes: Table 1 shows how many
    lost more than 0.1 IoU against their rough box."""
    from snapper.evaluation.metrics import box_table, format_table, summarize

    true = np.array([[0, 0, 100, 100]] * 4, float)
    rough = np.array([[0, 0, 100, 110]] * 4, float)  # IoU 0.91 with the truth
    pred = np.array([[0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 30]], float)  # one broken
    df = pd.concat([box_table(pred, true, rough_xyxy=rough, annotation_id=[1, 2, 3, 4]),
                    box_table(rough, true, rough_xyxy=rough, annotation_id=[1, 2, 3, 4], method="identity")])
    s = summarize(df, buckets=False).set_index("method")
    assert s.loc["snapper", "worse_gt_0.1"] == 25.0 and s.loc["identity", "worse_gt_0.1"] == 0.0
    assert "worse >0.1 IoU" in format_table(summarize(df, buckets=False)).splitlines()[0]
    no_rough = summarize(box_table(pred, true), buckets=False)
    assert np.isnan(no_rough.loc[0, "worse_gt_0.1"])
