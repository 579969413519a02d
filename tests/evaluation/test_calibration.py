"""Calibrated confidence: the isotonic fit is exact on data small enough to solve by hand,
keeps the order of edges, brings the calibration error down, and is reported per size bucket;
the beta and Platt maps recover the coefficients that made synthetic data, keep the order of
edges through their knots, and the ECE comes with its floor, bootstrap interval and the review
catch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from snapper.config import ModelConfig
from snapper.evaluation.calibration import (
    END_RISE,
    MIN_BUCKET_EDGES,
    ROUGH_AREA,
    calibrated_pairs,
    calibration_table,
    ece_floor,
    ece_interval,
    edge_pairs,
    expected_calibration_error,
    fit_calibration,
    fit_map,
    fit_parametric,
    fit_size_maps,
    parametric_map,
    pav,
    reliability,
    review_catch,
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


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_platt_and_beta_recover_the_coefficients_that_made_the_data():
    rng = np.random.default_rng(0)
    z = rng.normal(1.0, 2.0, 20000)
    conf = _sigmoid(z)  # raw confidence, overconfident: the truth is temperature 1/0.6, shift -0.4
    hit = (rng.uniform(size=z.size) < _sigmoid(0.6 * z - 0.4)).astype(float)
    a, k = fit_parametric(conf, hit, "platt")
    assert a == pytest.approx(0.6, abs=0.04) and k == pytest.approx(-0.4, abs=0.06)
    a, b, k = fit_parametric(conf, hit, "beta")  # beta with a = b is that same Platt map
    assert a == pytest.approx(0.6, abs=0.05) and b == pytest.approx(0.6, abs=0.05)
    assert k == pytest.approx(-0.4, abs=0.08)
    # bends the two ends apart: a = 1.5, b = 0.5
    c = rng.uniform(0.01, 0.99, 20000)
    hit = (rng.uniform(size=c.size) < _sigmoid(1.5 * np.log(c) - 0.5 * np.log1p(-c) + 0.2)).astype(float)
    np.testing.assert_allclose(fit_parametric(c, hit, "beta"), [1.5, 0.5, 0.2], atol=0.12)
    after = parametric_map(fit_parametric(c[:10000], hit[:10000], "beta"), c[10000:], "beta")
    assert expected_calibration_error(c[10000:], hit[10000:]) > 0.08
    assert expected_calibration_error(after, hit[10000:]) < 0.03


def test_a_slope_is_never_negative_and_a_confidence_that_ranks_nothing_is_refused():
    rng = np.random.default_rng(1)
    c = rng.uniform(0.01, 0.99, 5000)
    # hits rise with c but also at the low end (a < 0 would fit best): a is held at 0
    hit = (rng.uniform(size=c.size) < np.where(c < 0.2, 0.5, c)).astype(float)
    a, b, _ = fit_parametric(c, hit, "beta")
    assert a == 0 and b > 0
    with pytest.raises(ValueError, match="does not rank"):
        fit_parametric(c, (rng.uniform(size=c.size) < 1 - c).astype(float), "platt")


@pytest.mark.parametrize("method", ["beta", "platt"])
def test_a_parametric_map_stored_as_knots_reads_back_and_keeps_the_order_of_edges(method):
    rng = np.random.default_rng(2)
    conf = _sigmoid(rng.normal(2.0, 3.0, 4000))
    # overconfident at both ends (temperature 2): the map bends hard within 0.01 of 0 and 1
    hit = (rng.uniform(size=conf.size) < _sigmoid(0.5 * np.log(conf / (1 - conf)) + 0.2)).astype(float)
    knots, params = fit_map(conf, hit, method)
    cfg = ModelConfig(calibration=knots)  # a valid stored calibration
    assert len(params) == (3 if method == "beta" else 2)
    dense = np.unique(np.concatenate([np.linspace(0, 1, 5001), 1 - np.logspace(-7, -1, 500), np.logspace(-7, -1, 500)]))
    read = calibrate_confidence(dense, cfg.calibration)
    exact = parametric_map(list(params.values()), dense, method)
    assert np.abs(read - exact).max() < 1e-3
    assert (np.diff(read[(dense > 1e-5) & (dense < 1 - 1e-5)]) > 0).all()  # strictly: no two edges tie


def test_ece_floor_interval_and_review_catch():
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.2, 1.0, 1300)
    hit = (rng.uniform(size=conf.size) < conf).astype(float)  # perfectly calibrated
    floor, floor_hi = ece_floor(conf, n_sim=200)
    assert 0.015 < floor < floor_hi < 0.05  # ~1,300 edges cannot show an ECE near 0
    assert expected_calibration_error(conf, hit) < floor_hi
    lo, hi = ece_interval(conf, hit, n_boot=200)
    assert lo < expected_calibration_error(conf, hit) < hi
    # the same edges counted 4 times, as 4 copies from one image each: a wider interval by image
    groups = np.tile(np.arange(conf.size), 4)
    lo4, hi4 = ece_interval(np.tile(conf, 4), np.tile(hit, 4), groups, n_boot=200)
    lo1, hi1 = ece_interval(np.tile(conf, 4), np.tile(hit, 4), None, n_boot=200)
    assert hi4 - lo4 > 1.5 * (hi1 - lo1)
    assert np.isnan(ece_floor([])[0]) and np.isnan(ece_interval([], [])[0])
    # 10 edges, the 2 least confident flagged: they hold 1 of the 2 bad ones
    c = np.arange(10) / 10
    assert review_catch(c, [0, 1, 0, 0, 0, 0, 0, 1, 0, 0], share=0.2) == pytest.approx(50.0)
    assert np.isnan(review_catch(c, np.zeros(10)))
    eq = reliability(conf, hit, bins=13, equal_count=True)
    assert eq["n_edges"].tolist() == [100] * 13 and (eq["lo"].to_numpy()[1:] >= eq["hi"].to_numpy()[:-1]).all()


def test_per_size_maps_fit_each_rough_box_bucket_and_a_thin_bucket_reads_the_map_of_every_box():
    rng = np.random.default_rng(4)
    draws = 2
    # per draw: 600 small rough boxes' edges, underconfident; 600 large, overconfident; 40 medium (too few)
    area = np.repeat([20.0**2, 200.0**2, 60.0**2], [600, 600, 40])
    conf = _sigmoid(rng.normal(1.0, 1.5, (draws, area.size))).reshape(-1)
    z = np.log(conf / (1 - conf))
    truth = np.where(np.tile(area, draws) < 32**2, _sigmoid(1.5 * z + 0.8), _sigmoid(0.6 * z - 0.6))
    edges = pd.DataFrame({"conf": conf, "hit": (rng.uniform(size=conf.size) < truth).astype(float),
                          ROUGH_AREA: np.tile(area, draws), "draw": np.repeat(np.arange(draws), area.size)})
    maps, info = fit_size_maps(edges, "beta", min_edges=MIN_BUCKET_EDGES)
    assert set(maps) == {"all", "small", "large"} and not info["medium"]["own_map"]
    assert info["medium"]["n_edges"] == 80 and info["small"]["n_edges"] == 1200 and info["all"]["n_edges"] == 2480
    ModelConfig(calibration=maps)  # a valid stored calibration
    # the same raw confidence reads higher for a small box than for a large one, as the data made it
    small, large, medium = calibrate_confidence(np.full((3, 1), 0.7), maps, np.array([400.0, 40000.0, 3600.0]))
    assert small[0] > 0.8 and large[0] < 0.6
    assert medium[0] == pytest.approx(calibrate_confidence(np.array([0.7]), maps["all"])[0])
    # the before/after frame reads each edge by its rough box, as the read-out does
    after = calibrated_pairs(edges, maps).query("stage == 'after'")
    np.testing.assert_allclose(after["conf"], calibrate_confidence(conf, maps, edges[ROUGH_AREA].to_numpy()))
    small_rows = np.tile(area, draws) < 32**2
    one_map = calibrate_confidence(conf, fit_map(conf, edges["hit"], "beta")[0])
    assert (expected_calibration_error(after["conf"].to_numpy()[small_rows], edges["hit"][small_rows])
            < expected_calibration_error(one_map[small_rows], edges["hit"][small_rows]))
    # without min_edges per draw for any bucket, every box reads the one map
    maps, _ = fit_size_maps(edges, "beta", min_edges=10_000)
    assert set(maps) == {"all"}
