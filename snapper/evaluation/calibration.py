"""Calibrated per-edge confidence: a monotone map from the model's raw confidence to the share
of such edges that really land within ``model.confidence_px`` original pixels, and the
numbers that say whether a confidence means what it says.

The raw confidence is the model's own probability mass within ``confidence_px`` of its
decoded edge; nothing in training makes that mass match how often edges really land there
(on held-out COCO it does not). Isotonic regression fits the map without assuming its shape
(a temperature would assume one) and is monotone, so it cannot make a less confident edge
look more trustworthy than a more confident one. Two choices keep the ranking of edges for
review exactly as the raw confidence gave it, which is what reviewing the least confident
edges first is measured on:

* knots sit at each pooled block's mean confidence, not at its ends (centred isotonic
  regression), so the map rises strictly between knots instead of being a staircase whose
  steps would tie whole ranges of edges;
* beyond the first and last knot the map keeps rising by :data:`END_RISE` to x = 0 and 1
  (an observed share of 0 or 1 is kept :data:`END_RISE` inside [0, 1] for that).

The knots are stored in the checkpoint (``ModelConfig.calibration``) and read by
:func:`snapper.models.edges.calibrate_confidence` (np.interp), here and in every read-out.
An edge *hits* when its deviance from the truth is below ``confidence_px``: the complement of
the "bad edge" of :func:`snapper.evaluation.metrics.confidence_report` at 3 px.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from snapper.evaluation.metrics import ALL, CONF_COLS, DEV_EDGE_COLS, SIZE_BUCKETS
from snapper.geometry import EDGE_NAMES
from snapper.models.edges import calibrate_confidence

BINS = 15  # reliability bins of equal width over [0, 1] (the usual ECE setting)
# How far the map rises beyond its first and last knot (to x = 0 and x = 1): enough to keep the
# raw order of the least and most confident edges, far too little to matter as a probability.
END_RISE = 1e-4
Knots = list[list[float]]


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


def expected_calibration_error(conf: Sequence[float], hit: Sequence[float], bins: int = BINS) -> float:
    """Expected calibration error: over ``bins`` equal-width confidence bins, the edge-weighted
    mean of |mean confidence - share of hits|; 0 for a confidence that means what it says.
    NaN when no edge has a confidence."""
    c, h = _finite_pairs(conf, hit)
    if len(c) == 0:
        return float("nan")
    idx = np.minimum((np.clip(c, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
    n = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, weights=c, minlength=bins) - np.bincount(idx, weights=h, minlength=bins))
    return float(gap.sum() / n.sum())


def reliability(conf: Sequence[float], hit: Sequence[float], bins: int = BINS) -> pd.DataFrame:
    """One row per non-empty confidence bin: its range, ``n_edges``, ``conf_mean`` (what the
    model says) and ``hit_rate`` (what happened); the points of a reliability diagram."""
    c, h = _finite_pairs(conf, hit)
    idx = np.minimum((np.clip(c, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
    rows = [{"bin": b, "lo": b / bins, "hi": (b + 1) / bins, "n_edges": int(m.sum()),
             "conf_mean": float(c[m].mean()), "hit_rate": float(h[m].mean())}
            for b in range(bins) if (m := idx == b).any()]
    return pd.DataFrame(rows, columns=["bin", "lo", "hi", "n_edges", "conf_mean", "hit_rate"])


def edge_pairs(df: pd.DataFrame, confidence_px: float, by: Iterable[str] = ("method",)) -> pd.DataFrame:
    """The per-box table of :func:`snapper.evaluation.metrics.box_table` as one row per edge:
    the ``by`` columns, ``size`` (an edge is in its box's COCO size bucket), ``edge``, ``conf``
    and ``hit`` (deviance below ``confidence_px``). Edges without a confidence are left out."""
    keys = [k for k in by if k in df.columns]
    n = len(df)
    conf = df[CONF_COLS].to_numpy(np.float64).reshape(-1)
    dev = df[DEV_EDGE_COLS].to_numpy(np.float64).reshape(-1)
    cols = {k: np.repeat(df[k].to_numpy(), len(EDGE_NAMES)) for k in [*keys, "size"]}
    out = pd.DataFrame({**cols, "edge": np.tile(np.asarray(EDGE_NAMES, dtype=object), n), "conf": conf,
                        "hit": (dev < confidence_px).astype(np.float64)})
    return out[np.isfinite(conf)].reset_index(drop=True)


def calibrated_pairs(edges: pd.DataFrame, calibration: Knots, stage: str = "stage") -> pd.DataFrame:
    """``edges`` (of :func:`edge_pairs`) twice, under ``stage`` = "before" (raw) and "after"
    (through ``calibration``): the frame the before/after tables and diagram are drawn from."""
    after = edges.assign(conf=calibrate_confidence(edges["conf"].to_numpy(), calibration))
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


def calibration_table(edges: pd.DataFrame, by: Iterable[str] = ("method",), bins: int = BINS) -> pd.DataFrame:
    """Per ``by`` group, overall and per COCO size bucket: ``n_edges``, ``conf_mean``,
    ``hit_rate`` and ``ece`` (:func:`expected_calibration_error`) of the edges of
    :func:`edge_pairs`."""
    by = [k for k in by if k in edges.columns]
    rows = [{**keys, "n_edges": len(g), "conf_mean": float(g["conf"].mean()), "hit_rate": float(g["hit"].mean()),
             "ece": expected_calibration_error(g["conf"], g["hit"], bins)} for keys, g in _groups(edges, by)]
    return pd.DataFrame(rows, columns=[*by, "size", "n_edges", "conf_mean", "hit_rate", "ece"])


def reliability_table(edges: pd.DataFrame, by: Iterable[str] = ("method",), bins: int = BINS) -> pd.DataFrame:
    """:func:`reliability` per ``by`` group, overall and per COCO size bucket (the diagram's data)."""
    by = [k for k in by if k in edges.columns]
    frames = [reliability(g["conf"], g["hit"], bins).assign(**keys) for keys, g in _groups(edges, by)]
    columns = [*by, "size", "bin", "lo", "hi", "n_edges", "conf_mean", "hit_rate"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
