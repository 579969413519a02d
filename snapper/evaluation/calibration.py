"""Calibrated per-edge confidence: a monotone map from the model's raw confidence to the share
of such edges that really land within ``model.confidence_px`` original pixels, and the
numbers that say whether a confidence means what it says (and how precisely they can say it).

The raw confidence is the model's own probability mass within ``confidence_px`` of its
decoded edge; nothing in training makes that mass match how often edges really land there.
Three maps (:data:`METHODS`), all fitted on held-out (confidence, hit) pairs and all strictly
increasing, so the ranking of edges for review stays exactly as the raw confidence gave it:

* ``"beta"`` (the default; Kull et al. 2017): hit probability
  ``sigmoid(a ln c - b ln(1 - c) + k)`` with a, b >= 0, fitted by maximum likelihood. Three
  numbers: it can bend the two ends separately, and cannot follow the noise of a few hundred
  held-out boxes as an isotonic staircase does;
* ``"platt"``: ``sigmoid(a logit(c) + k)``, a > 0 (a temperature 1/a and a shift);
* ``"isotonic"``: the non-parametric pool-adjacent-violators fit, with knots at each pooled
  block's mean confidence (centred isotonic regression, so the map rises strictly between
  knots) and :data:`END_RISE` beyond the first and last knot.

Every map is stored the same way, as knots ``[[x...], [y...]]`` (``ModelConfig.calibration``)
read by :func:`snapper.models.edges.calibrate_confidence` (np.interp): a parametric map is
sampled on :func:`knot_grid`, dense where confidences crowd (near 0 and 1), finely enough that
interpolating it is off by < 1e-3. :func:`fit_size_maps` fits one such map per COCO size bucket
of the rough box, stored as ``{"all": knots, "small": knots, ...}`` and read by each box's rough
box (a bucket with too few edges reads ``"all"``). An edge *hits* when its deviance from the truth is below
``confidence_px``: the complement of the "bad edge" of
:func:`snapper.evaluation.metrics.confidence_report` at 3 px.

The expected calibration error of a finite sample is not 0 even for a perfectly calibrated
confidence: :func:`ece_floor` simulates that floor, :func:`ece_interval` bootstraps the ECE
over images (the edges of one image are not independent), so that an ECE is read against both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from snapper.evaluation.metrics import ALL, CONF_COLS, DEV_EDGE_COLS, SIZE_BUCKETS
from snapper.geometry import EDGE_NAMES
from snapper.models.edges import Calibration, calibrate_confidence, calibration_buckets

BINS = 15  # reliability bins of equal width over [0, 1] (the usual ECE setting)
METHODS = ("beta", "platt", "isotonic")
DEFAULT_METHOD = "beta"
_EPS = 1e-6  # confidences are clipped to [_EPS, 1 - _EPS] before a log or logit
# How far the map rises beyond its first and last knot (to x = 0 and x = 1): enough to keep the
# raw order of the least and most confident edges, far too little to matter as a probability.
END_RISE = 1e-4
Knots = list[list[float]]
# A size bucket of the rough box gets a map of its own (fit_size_maps) only with at least this
# many selection edges per jitter draw (25 boxes: the draws redraw the same boxes, so it is
# counted per draw) and at least one hit and one miss; a bucket with fewer reads the map fitted
# on every box. Not a count of misses: small COCO boxes miss so rarely (~11 misses in ~420 edges
# per draw on the selection split) that 30 misses per draw sent them to the map of every box in
# every cross-validation fold, which is worse for them than no map at all (study.py there).
MIN_BUCKET_EDGES = 100
ROUGH_AREA = "rough_area"  # the edge_pairs column a per-size calibration is fitted and read by


def _blocks(y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool adjacent violators: the blocks (value, weight, length) of the weighted
    least-squares non-decreasing fit to ``y`` in order. Equal neighbours are pooled too, so the
    block values rise strictly (the fitted values are the same either way)."""
    vals: list[float] = []
    wts: list[float] = []
    lens: list[int] = []
    for yi, wi in zip(y.tolist(), w.tolist()):
        vals.append(yi)
        wts.append(wi)
        lens.append(1)
        while len(vals) > 1 and vals[-2] >= vals[-1]:
            v, wt, n = vals.pop(), wts.pop(), lens.pop()
            total = wts[-1] + wt
            vals[-1] = (vals[-1] * wts[-1] + v * wt) / total if total > 0 else (vals[-1] + v) / 2
            wts[-1] = total
            lens[-1] += n
    return np.asarray(vals), np.asarray(wts), np.asarray(lens, dtype=np.int64)


def pav(y: Sequence[float], weights: Sequence[float] | None = None) -> np.ndarray:
    """The isotonic (non-decreasing) least-squares fit to ``y`` taken in the given order, one
    value per element: each run of elements that would otherwise decrease shares their mean."""
    y_arr = np.asarray(y, dtype=np.float64).reshape(-1)
    w_arr = np.ones_like(y_arr) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w_arr) != len(y_arr):
        raise ValueError(f"pav: {len(w_arr)} weights for {len(y_arr)} values")
    vals, _, lens = _blocks(y_arr, w_arr)
    return np.repeat(vals, lens)


def _finite_pairs(conf: Sequence[float], hit: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(conf, dtype=np.float64).reshape(-1)
    h = np.asarray(hit, dtype=np.float64).reshape(-1)
    if c.shape != h.shape:
        raise ValueError(f"{len(c)} confidences for {len(h)} outcomes")
    ok = np.isfinite(c) & np.isfinite(h)
    return c[ok], h[ok]


def fit_calibration(conf: Sequence[float], hit: Sequence[float]) -> Knots:
    """Knots ``[[x...], [y...]]`` (``ModelConfig.calibration``) of the isotonic map from raw
    confidence to the chance of a hit, fitted on (confidence, hit) pairs of held-out edges
    (edges without a confidence are left out). Raises ValueError when no pair is left."""
    c, h = _finite_pairs(conf, hit)
    if len(c) == 0:
        raise ValueError("no edge with a confidence to fit a calibration on")
    c = np.clip(c, 0.0, 1.0)
    xs, inverse = np.unique(c, return_inverse=True)  # ties in confidence are one point of the fit
    counts = np.bincount(inverse).astype(np.float64)
    hits = np.bincount(inverse, weights=h)
    vals, _, lens = _blocks(hits / counts, counts)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    centres = np.add.reduceat(xs * counts, starts) / np.add.reduceat(counts, starts)
    # A share of 0 or 1 is kept just inside, so that the ends can still rise towards 0 and 1;
    # a knot that this makes equal to its neighbour goes (the map stays strictly increasing).
    y_all = np.clip(vals, END_RISE, 1.0 - END_RISE)
    keep = np.concatenate([[True], np.diff(y_all) > 0])
    x, y = centres[keep].tolist(), y_all[keep].tolist()
    if x[0] > 0.0:
        x.insert(0, 0.0)
        y.insert(0, max(0.0, y[0] - END_RISE))
    if x[-1] < 1.0:
        x.append(1.0)
        y.append(min(1.0, y[-1] + END_RISE))
    return [x, y]


def _features(conf: np.ndarray, method: str) -> np.ndarray:
    """The design matrix of a parametric map: its increasing features of the confidence, then 1."""
    c = np.clip(conf, _EPS, 1.0 - _EPS)
    one = np.ones_like(c)
    if method == "platt":
        return np.stack([np.log(c) - np.log1p(-c), one], axis=1)
    if method == "beta":
        return np.stack([np.log(c), -np.log1p(-c), one], axis=1)
    raise ValueError(f"no parametric calibration {method!r}; one of {METHODS}")


def _logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float = 1e-8) -> np.ndarray:
    """Maximum-likelihood logistic regression (Newton steps, halved until the loss drops)."""

    def loss(t: np.ndarray) -> float:
        z = x @ t
        return float((w * (np.logaddexp(0.0, z) - y * z)).sum() + ridge * (t @ t) / 2)

    theta = np.zeros(x.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x @ theta)))
        grad = x.T @ (w * (p - y)) + ridge * theta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + ridge * np.eye(len(theta))
        step, before, scale = np.linalg.solve(hess, grad), loss(theta), 1.0
        while loss(theta - scale * step) > before and scale > 1e-6:
            scale /= 2
        theta = theta - scale * step
        if np.abs(scale * step).max() < 1e-10:
            break
    return theta


def fit_parametric(conf: Sequence[float], hit: Sequence[float], method: str = DEFAULT_METHOD) -> list[float]:
    """The coefficients of a ``"beta"`` ([a, b, k]) or ``"platt"`` ([a, k]) map fitted by maximum
    likelihood on (confidence, hit) pairs. The slopes are kept >= 0 (a slope that comes out
    negative is fixed at 0 and the rest refitted), so the map never reverses the order of edges.
    Raises ValueError without pairs, or when no slope is left (the confidence ranks nothing)."""
    c, h = _finite_pairs(conf, hit)
    if len(c) == 0:
        raise ValueError("no edge with a confidence to fit a calibration on")
    x = _features(c, method)
    free = list(range(x.shape[1]))  # the last column (the intercept) is always free
    while True:
        theta = np.zeros(x.shape[1])
        theta[free] = _logistic(x[:, free], h, np.ones_like(h))
        slopes = [i for i in free[:-1] if theta[i] < 0]
        if not slopes:
            break
        free.remove(min(slopes, key=lambda i: theta[i]))
    if not (theta[:-1] > 0).any():
        raise ValueError(f"{method} calibration: the confidence does not rank hits above misses here "
                         f"({len(c)} edges); nothing to calibrate")
    return theta.tolist()


def parametric_map(params: Sequence[float], conf: Sequence[float], method: str = DEFAULT_METHOD) -> np.ndarray:
    """The fitted chance of a hit at each confidence, under :func:`fit_parametric`'s coefficients."""
    c = np.asarray(conf, dtype=np.float64).reshape(-1)
    return 1.0 / (1.0 + np.exp(-(_features(c, method) @ np.asarray(params, dtype=np.float64))))


def knot_grid() -> np.ndarray:
    """Where a parametric map is sampled into knots: every 0.01, plus logit-spaced points that
    reach 6e-6 of 0 and 1 (raw confidences of small boxes crowd within 1e-3 of 1)."""
    logit_spaced = 1.0 / (1.0 + np.exp(-np.linspace(-12.0, 12.0, 121)))
    return np.unique(np.concatenate([np.linspace(0.0, 1.0, 101), logit_spaced]))


def fit_map(conf: Sequence[float], hit: Sequence[float],
            method: str = DEFAULT_METHOD) -> tuple[Knots, dict[str, float]]:
    """The knots of a ``method`` map (:data:`METHODS`) fitted on (confidence, hit) pairs, and its
    coefficients by name ({} for isotonic). A parametric map's knots rise strictly (a knot that
    rounding would tie with its neighbour goes), so edges keep their order."""
    if method == "isotonic":
        return fit_calibration(conf, hit), {}
    params = fit_parametric(conf, hit, method)
    x = knot_grid()
    y = parametric_map(params, x, method)
    keep = np.concatenate([[True], np.diff(y) > 0])
    names = ("a", "b", "k") if method == "beta" else ("a", "k")
    return [x[keep].tolist(), y[keep].tolist()], dict(zip(names, params))


def fit_size_maps(edges: pd.DataFrame, method: str = DEFAULT_METHOD, min_edges: int = MIN_BUCKET_EDGES,
                  ) -> tuple[dict[str, Knots], dict[str, dict[str, object]]]:
    """A per-size calibration (``ModelConfig.calibration`` as ``{"all": knots, "small": knots,
    ...}``) fitted on ``edges`` (``conf``, ``hit``, :data:`ROUGH_AREA`, and ``draw`` where several
    jitter draws are pooled): the ``method`` map of every edge under ``"all"``, and one per COCO
    size bucket of the rough box (what inference knows, :func:`snapper.models.edges.calibration_buckets`)
    that has ``min_edges`` edges per draw and both outcomes (:data:`MIN_BUCKET_EDGES`). Also,
    per key, what went into it: ``n_edges``, ``n_hits``, ``n_misses``, ``own_map`` (False: the
    bucket reads ``"all"``) and the map's ``params``."""
    draws = int(edges["draw"].nunique()) if "draw" in edges.columns and len(edges) else 1
    knots, params = fit_map(edges["conf"], edges["hit"], method)
    maps: dict[str, Knots] = {ALL: knots}
    bucket = calibration_buckets(edges[ROUGH_AREA].to_numpy(np.float64))
    info: dict[str, dict[str, object]] = {}
    for name, rows in ((ALL, np.ones(len(edges), dtype=bool)), *((b, bucket == b) for b in SIZE_BUCKETS)):
        hits = int(edges["hit"].to_numpy()[rows].sum())
        entry: dict[str, object] = {"n_edges": int(rows.sum()), "n_hits": hits, "n_misses": int(rows.sum()) - hits,
                                    "own_map": name == ALL, "params": params}
        if name != ALL and rows.sum() >= min_edges * draws and 0 < hits < rows.sum():
            try:
                maps[name], entry["params"] = fit_map(edges["conf"][rows], edges["hit"][rows], method)
                entry["own_map"] = True
            except ValueError:  # the confidence ranks nothing in this bucket: it reads "all"
                pass
        info[name] = entry
    return maps, info


def _bin_index(c: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((np.clip(c, 0.0, 1.0) * bins).astype(np.int64), bins - 1)


def _ece(idx: np.ndarray, c: np.ndarray, h: np.ndarray, bins: int, w: np.ndarray | None = None) -> float:
    n = np.bincount(idx, weights=w, minlength=bins)
    cw, hw = (c, h) if w is None else (c * w, h * w)
    gap = np.abs(np.bincount(idx, weights=cw, minlength=bins) - np.bincount(idx, weights=hw, minlength=bins))
    return float(gap.sum() / n.sum())


def expected_calibration_error(conf: Sequence[float], hit: Sequence[float], bins: int = BINS) -> float:
    """Expected calibration error: over ``bins`` equal-width confidence bins, the edge-weighted
    mean of |mean confidence - share of hits|; 0 for a confidence that means what it says.
    NaN when no edge has a confidence."""
    c, h = _finite_pairs(conf, hit)
    if len(c) == 0:
        return float("nan")
    return _ece(_bin_index(c, bins), c, h, bins)


def ece_floor(conf: Sequence[float], bins: int = BINS, n_sim: int = 200, seed: int = 0) -> tuple[float, float]:
    """The ECE a *perfectly calibrated* confidence would still show on these edges (hits drawn
    as Bernoulli(confidence), ``n_sim`` times): its mean and 95th percentile. An ECE near the
    mean is as calibrated as this many edges can show; NaNs without edges."""
    c = np.asarray(conf, dtype=np.float64).reshape(-1)
    c = np.clip(c[np.isfinite(c)], 0.0, 1.0)
    if len(c) == 0 or n_sim < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = _bin_index(c, bins)
    sims = np.array([_ece(idx, c, (rng.random(len(c)) < c).astype(np.float64), bins) for _ in range(n_sim)])
    return float(sims.mean()), float(np.percentile(sims, 95))


def ece_interval(conf: Sequence[float], hit: Sequence[float], groups: Sequence[object] | None = None,
                 bins: int = BINS, n_boot: int = 500, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """A bootstrap interval (``level``) of the ECE, resampling whole ``groups`` (e.g. images:
    edges of one image, or of one box in several jitter draws, are not independent; None: each
    edge alone) with replacement. NaNs without edges or resamples."""
    c = np.asarray(conf, dtype=np.float64).reshape(-1)
    h = np.asarray(hit, dtype=np.float64).reshape(-1)
    g = np.arange(len(c)) if groups is None else np.asarray(groups, dtype=object).reshape(-1)
    ok = np.isfinite(c) & np.isfinite(h)
    if not ok.any() or n_boot < 1:
        return float("nan"), float("nan")
    c, h = c[ok], h[ok]
    codes, uniques = pd.factorize(pd.Series(g[ok]))
    rng = np.random.default_rng(seed)
    idx, k = _bin_index(c, bins), len(uniques)
    boots = np.array([_ece(idx, c, h, bins, np.bincount(rng.integers(0, k, k), minlength=k)[codes].astype(np.float64))
                      for _ in range(n_boot)])
    tail = (1.0 - level) / 2 * 100
    return float(np.percentile(boots, tail)), float(np.percentile(boots, 100 - tail))


def review_catch(conf: Sequence[float], bad: Sequence[bool], share: float = 0.1, seed: int = 0) -> float:
    """Percent of the ``bad`` edges among the ``share`` least confident ones (ties in confidence
    broken at random, seeded, as in :func:`snapper.evaluation.metrics.confidence_report`): what
    reviewing that share of edges first catches. NaN without a bad edge."""
    c = np.asarray(conf, dtype=np.float64).reshape(-1)
    b = np.asarray(bad, dtype=bool).reshape(-1)
    ok = np.isfinite(c)
    c, b = c[ok], b[ok]
    if not b.any():
        return float("nan")
    n_flag = min(len(c), int(np.ceil(share * len(c))))
    order = np.lexsort((np.random.default_rng(seed).random(len(c)), c))
    return float(100.0 * b[order[:n_flag]].sum() / b.sum())


def reliability(conf: Sequence[float], hit: Sequence[float], bins: int = BINS,
                equal_count: bool = False) -> pd.DataFrame:
    """One row per non-empty confidence bin: its range, ``n_edges``, ``conf_mean`` (what the
    model says) and ``hit_rate`` (what happened); the points of a reliability diagram. Bins of
    equal width over [0, 1] (the ECE's), or with ``equal_count`` of equal numbers of edges
    (``lo``/``hi`` their lowest and highest confidence): every point then weighs the same, where
    equal widths leave a few edges alone in the sparse bins."""
    c, h = _finite_pairs(conf, hit)
    if equal_count:
        rank = np.empty(len(c), dtype=np.int64)
        rank[np.argsort(c, kind="stable")] = np.arange(len(c))
        idx = rank * bins // max(len(c), 1)
    else:
        idx = _bin_index(c, bins)
    rows = []
    for b in range(bins):
        m = idx == b
        if m.any():
            lo, hi = (float(c[m].min()), float(c[m].max())) if equal_count else (b / bins, (b + 1) / bins)
            rows.append({"bin": b, "lo": lo, "hi": hi, "n_edges": int(m.sum()),
                         "conf_mean": float(c[m].mean()), "hit_rate": float(h[m].mean())})
    return pd.DataFrame(rows, columns=["bin", "lo", "hi", "n_edges", "conf_mean", "hit_rate"])


def edge_pairs(df: pd.DataFrame, confidence_px: float, by: Iterable[str] = ("method",)) -> pd.DataFrame:
    """The per-box table of :func:`snapper.evaluation.metrics.box_table` as one row per edge:
    the ``by`` columns, ``size`` (an edge is in its box's COCO size bucket), ``image`` (file name
    and image id where the table has them, else the box's row: what :func:`ece_interval`
    resamples), ``edge``, ``conf``, ``dev`` (px) and ``hit`` (deviance below
    ``confidence_px``). Edges without a confidence are left out."""
    keys = [k for k in by if k in df.columns]
    n = len(df)
    conf = df[CONF_COLS].to_numpy(np.float64).reshape(-1)
    dev = df[DEV_EDGE_COLS].to_numpy(np.float64).reshape(-1)
    cols = {k: np.repeat(df[k].to_numpy(), len(EDGE_NAMES)) for k in [*keys, "size"]}
    if "image_id" in df.columns and df["image_id"].notna().all():
        image = df["image_id"].astype(str)
        image = (df["file_name"].astype(str) + ":" + image) if "file_name" in df.columns else image
    else:
        image = pd.Series(np.arange(n)).astype(str)
    out = pd.DataFrame({**cols, "image": np.repeat(image.to_numpy(object), len(EDGE_NAMES)),
                        "edge": np.tile(np.asarray(EDGE_NAMES, dtype=object), n), "conf": conf, "dev": dev,
                        "hit": (dev < confidence_px).astype(np.float64)})
    return out[np.isfinite(conf)].reset_index(drop=True)


def calibrated_pairs(edges: pd.DataFrame, calibration: Calibration, stage: str = "stage") -> pd.DataFrame:
    """``edges`` (of :func:`edge_pairs`) twice, under ``stage`` = "before" (raw) and "after"
    (through ``calibration``, read as every read-out reads it: a per-size one by the edges'
    :data:`ROUGH_AREA` where they have it): the frame the before/after tables and diagram are
    drawn from."""
    area = edges[ROUGH_AREA].to_numpy(np.float64) if ROUGH_AREA in edges.columns else None
    after = edges.assign(conf=calibrate_confidence(edges["conf"].to_numpy(), calibration, area))
    return pd.concat([edges.assign(**{stage: "before"}), after.assign(**{stage: "after"})], ignore_index=True)


def _groups(edges: pd.DataFrame, by: list[str]) -> Iterable[tuple[dict[str, object], pd.DataFrame]]:
    """(group keys incl. ``size``, its edges): each ``by`` group overall, then per size bucket."""
    groups = edges.groupby(by, sort=False, dropna=False) if by else [((), edges)]
    for key, g in groups:
        base = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        yield {**base, "size": ALL}, g
        for bucket in SIZE_BUCKETS:
            sub = g[g["size"] == bucket]
            if len(sub):
                yield {**base, "size": bucket}, sub


def _uncertainty(g: pd.DataFrame, bins: int, n_boot: int, seed: int) -> dict[str, float]:
    lo, hi = ece_interval(g["conf"], g["hit"], g.get("image"), bins, n_boot, seed=seed)
    floor, floor_hi = ece_floor(g["conf"], bins, n_sim=max(n_boot // 2, 1), seed=seed)
    return {"ece_lo": lo, "ece_hi": hi, "ece_floor": floor, "ece_floor_p95": floor_hi}


def calibration_table(edges: pd.DataFrame, by: Iterable[str] = ("method",), bins: int = BINS,
                      n_boot: int = 0, seed: int = 0) -> pd.DataFrame:
    """Per ``by`` group, overall and per COCO size bucket: ``n_edges``, ``conf_mean``,
    ``hit_rate`` and ``ece`` (:func:`expected_calibration_error`) of the edges of
    :func:`edge_pairs`. Where they come from several jitter draws (a ``draw`` column), also
    ``ece_first_draw`` (the first draw's alone, as one draw would measure it). With ``n_boot``:
    ``ece_lo``/``ece_hi`` (95% bootstrap over images, :func:`ece_interval`) and
    ``ece_floor``/``ece_floor_p95`` (a perfectly calibrated confidence's, :func:`ece_floor`)."""
    by = [k for k in by if k in edges.columns]
    draws = "draw" in edges.columns and edges["draw"].nunique() > 1
    extra = ["ece_first_draw"] if draws else []
    extra += ["ece_lo", "ece_hi", "ece_floor", "ece_floor_p95"] if n_boot else []
    rows = []
    for keys, g in _groups(edges, by):
        row = {**keys, "n_edges": len(g), "conf_mean": float(g["conf"].mean()), "hit_rate": float(g["hit"].mean()),
               "ece": expected_calibration_error(g["conf"], g["hit"], bins)}
        if draws:
            first = g[g["draw"] == edges["draw"].min()]
            row["ece_first_draw"] = expected_calibration_error(first["conf"], first["hit"], bins)
        rows.append({**row, **(_uncertainty(g, bins, n_boot, seed) if n_boot else {})})
    return pd.DataFrame(rows, columns=[*by, "size", "n_edges", "conf_mean", "hit_rate", "ece", *extra])


def reliability_table(edges: pd.DataFrame, by: Iterable[str] = ("method",), bins: int = BINS,
                      equal_count: bool = False) -> pd.DataFrame:
    """:func:`reliability` per ``by`` group, overall and per COCO size bucket (the diagram's data)."""
    by = [k for k in by if k in edges.columns]
    frames = [reliability(g["conf"], g["hit"], bins, equal_count).assign(**keys) for keys, g in _groups(edges, by)]
    columns = [*by, "size", "bin", "lo", "hi", "n_edges", "conf_mean", "hit_rate"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
