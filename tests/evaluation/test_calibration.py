"""Calibrated confidence: the isotonic fit is exact on data small enough to solve by hand,
keeps the order of edges, brings the calibration error down, and is reported per size bucket."""

from __future__ import annotations

import numpy as np
import pytest

from snapper.config import ModelConfig
from snapper.evaluation.calibration import (
    END_RISE,
    calibrated_pairs,
    calibration_table,
    edge_pairs,
    expected_calibration_error,
    fit_calibration,
    pav,
    reliability,
)
from snapper.evaluation.metrics import box_table
from snapper.models.edges import calibrate_confidence


def test_pav_is_exact_and_monotone():
    np.testing.assert_allclose(pav([1, 3, 2, 4, 3, 3, 5]), [1, 2.5, 2.5, 10 / 3, 10 / 3, 10 / 3, 5])
    np.testing.assert_allclose(pav([3, 1], weights=[3, 1]), [2.5, 2.5])  # weighted mean of the pooled block
    np.testing.assert_allclose(pav([0, 1, 1, 2]), [0, 1, 1, 2])  # already monotone: unchanged
    y = np.random.default_rng(0).normal(size=300)
    fit = pav(y)
    assert (np.diff(fit) >= 0).all() and np.isclose(fit.sum(), y.sum())  # block means keep the total


def test_knots_sit_at_block_centres_and_the_ends_keep_rising():
    # 0.1 hits, 0.2 misses: a violation, pooled at x = 0.15 with share 0.5; 0.3 always hits
    x, y = fit_calibration([0.1, 0.2, 0.3, 0.3], [1, 0, 1, 1])
    np.testing.assert_allclose(x, [0, 0.15, 0.3, 1])
    np.testing.assert_allclose(y, [0.5 - END_RISE, 0.5, 1 - END_RISE, 1])
    ModelConfig(calibration=[x, y])  # a valid stored calibration
    np.testing.assert_allclose(calibrate_confidence(np.array([0.15, 0.225, np.nan]), [x, y]),
                               [0.5, 0.75 - END_RISE / 2, np.nan])
    # the order of edges is kept exactly, also where the share observed is 0 or 1
    rng = np.random.default_rng(1)
    conf = rng.uniform(size=2000)
    knots = fit_calibration(conf, rng.uniform(size=2000) < conf**3)
    order = np.argsort(conf)
    assert (np.diff(calibrate_confidence(conf[order], knots)) > 0).all()
    with pytest.raises(ValueError, match="no edge"):
        fit_calibration([np.nan], [1])


def test_ece_is_exact_and_drops_after_fitting():
    assert expected_calibration_error([0.9, 0.9], [1, 0]) == pytest.approx(0.4)
    assert expected_calibration_error([0.1, 0.9], [0, 1], bins=2) == pytest.approx(0.1)
    assert np.isnan(expected_calibration_error([], []))
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 4000)  # overconfident by 0.3 everywhere
    hit = (rng.uniform(size=4000) < conf - 0.3).astype(float)
    before = expected_calibration_error(conf, hit)
    fit_half, test_half = slice(0, 2000), slice(2000, None)
    knots = fit_calibration(conf[fit_half], hit[fit_half])
    after = expected_calibration_error(calibrate_confidence(conf[test_half], knots), hit[test_half])
    assert before > 0.25 and after < 0.05
    rel = reliability(conf, hit)
    assert rel["n_edges"].sum() == 4000 and (rel["conf_mean"] - rel["hit_rate"]).mean() > 0.25


def test_tables_per_size_bucket_before_and_after():
    true = np.array([[0, 0, 10, 10], [0, 0, 200, 200]], dtype=float)  # one small box, one large
    pred = true + np.array([[0, 0, 5, 0], [1, 0, 0, 10]])  # deviances: small 0,0,5,0; large 1,0,0,10
    conf = np.array([[0.9, 0.9, 0.9, 0.9], [0.5, 0.5, 0.5, 0.5]])
    df = box_table(pred, true, confidence=conf)
    edges = edge_pairs(df, confidence_px=3.0)
    assert list(edges["size"]) == ["small"] * 4 + ["large"] * 4  # an edge is in its box's bucket
    assert edges["hit"].tolist() == [1, 1, 0, 1, 1, 1, 1, 0]
    table = calibration_table(edges)
    by_size = table.set_index("size")
    assert by_size.loc["all", "n_edges"] == 8 and by_size.loc["small", "hit_rate"] == 0.75
    assert by_size.loc["small", "ece"] == pytest.approx(0.15) and by_size.loc["large", "ece"] == pytest.approx(0.25)
    both = calibration_table(calibrated_pairs(edges, fit_calibration(edges["conf"], edges["hit"])), by=("stage",))
    assert list(dict.fromkeys(both["stage"])) == ["before", "after"]
    ece = both.set_index(["stage", "size"])["ece"]
    assert ece["after", "all"] < ece["before", "all"]
