"""Box-level metrics of the paper (Table 1), per box and summarised.

Everything is measured in pixels of the *original* image, on xyxy boxes (see
:mod:`snapper.geometry`). The per-box table (:func:`box_table`) is the unit that evaluation
writes to Parquet; summaries are always recomputed from it, so a new grouping (per method,
per size bucket, per seed, per dataset...) never needs a re-run of the model.

Conventions that reproduce the paper's own baseline row (see SPEC): thresholds are strict
(``< 1 px``, ``< 3 px``, ``IoU > 0.9``), corner deviance is the Euclidean distance, and
edges/corners are pooled (each box contributes 4 edges and 4 corners).
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, NamedTuple

import numpy as np
import pandas as pd

from snapper.geometry import (  # noqa: F401  (the size buckets: re-exported, defined once in geometry)
    CORNER_NAMES,
    EDGE_NAMES,
    MEDIUM_MAX_AREA,
    SIZE_BUCKETS,
    SMALL_MAX_AREA,
    paired_iou,
    size_bucket,
    xywh_to_xyxy,
    xyxy_to_xywh,
)

ALL = "all"

# xy indices (into xyxy) of each corner, in CORNER_NAMES order.
_CORNER_XY = {"top_left": (0, 1), "top_right": (2, 1), "bottom_right": (2, 3), "bottom_left": (0, 3)}

DEV_EDGE_COLS = [f"dev_{e}" for e in EDGE_NAMES]
DEV_CORNER_COLS = [f"dev_{c}" for c in CORNER_NAMES]
CONF_COLS = [f"conf_{e}" for e in EDGE_NAMES]

# Summary columns: machine name -> the paper's header. Machine names are valid MLflow metric
# names (no '<' or '>'), so summary_metrics() can log them unchanged.
TABLE1_COLUMNS = {
    "miou": "mIoU",
    "iou_gt_0.9": "IoU>0.9",
    "edge_lt_1px": "edge <1px",
    "edge_lt_3px": "edge <3px",
    "corner_lt_1px": "corner <1px",
    "corner_lt_3px": "corner <3px",
}
# Printed after Table 1: the share of boxes the method made worse than their rough box by more
# than 0.1 IoU with the truth (a model can raise the averages and still break some boxes).
WORSE_BY = 0.1
HARM_COLUMNS = {"worse_gt_0.1": "worse >0.1 IoU"}
EXTRA_COLUMNS = {
    "edge_dev_mean_px": "edge dev mean px",
    "edge_dev_median_px": "edge dev median px",
    **{f"{e}_lt_1px": f"{e} <1px" for e in EDGE_NAMES},
}


def _boxes(name: str, value: Any, n: int | None) -> np.ndarray:
    b = np.asarray(value, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        if b.size == 0:
            b = b.reshape(0, 4)
        else:
            raise ValueError(f"{name}: expected shape (N, 4), got {b.shape}")
    if n is not None and len(b) != n:
        raise ValueError(f"{name}: {len(b)} rows, expected {n} (one per true box)")
    return b


def _column(name: str, value: Any, n: int) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim == 0:
        a = np.full(n, a)
    if a.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {a.shape}")
    return a


def _ids(name: str, value: Any, n: int) -> pd.Series:
    """Integer ids as a nullable column, so absent ids survive Parquet and concatenation."""
    if value is None:
        return pd.Series(pd.array([pd.NA] * n, dtype="Int64"))
    return pd.Series(pd.array(_column(name, value, n), dtype="Int64"))


def _check_finite(name: str, boxes: np.ndarray, annotation_id: Any) -> None:
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        ident = f"annotation {np.asarray(annotation_id).reshape(-1)[i]}" if annotation_id is not None else f"row {i}"
        raise ValueError(f"{name}: {int(bad.sum())} box(es) with non-finite coordinates, first at "
                         f"{ident}: {boxes[i].tolist()}")


def box_table(
    pred_xyxy: np.ndarray,
    true_xyxy: np.ndarray,
    *,
    image_id: Any = None,
    annotation_id: Any = None,
    category_id: Any = None,
    rough_xyxy: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    area: np.ndarray | None = None,
    method: str = "snapper",
    extra: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per box with everything needed to summarise or plot later.

    ``area`` picks the size bucket. COCO's own ``area`` field is the *segmentation* area, so
    pass it to bucket exactly as COCO does; when absent the true box's ``w * h`` is used
    (boxes are never smaller than their mask, so a few objects move up one bucket).

    Columns: ``image_id, annotation_id, category_id`` (nullable ints), ``method``, ``size``,
    ``area``, ``rough_x/y/w/h``, ``pred_x/y/w/h``, ``true_x/y/w/h`` (COCO xywh, original
    pixels; rough is NaN when not given), ``iou``, ``dev_<edge>`` (|pred - true| px),
    ``dev_<corner>`` (Euclidean px), ``conf_<edge>`` (NaN when not given), then ``extra``.

    Non-finite predicted or true boxes raise (naming the annotation): a failed prediction
    must be accounted for by the caller, never averaged in as a silent NaN.
    """
    true = _boxes("true_xyxy", true_xyxy, None)
    n = len(true)
    pred = _boxes("pred_xyxy", pred_xyxy, n)
    _check_finite("true_xyxy", true, annotation_id)
    _check_finite("pred_xyxy", pred, annotation_id)
    rough = np.full((n, 4), np.nan) if rough_xyxy is None else _boxes("rough_xyxy", rough_xyxy, n)
    conf = np.full((n, 4), np.nan) if confidence is None else _boxes("confidence", confidence, n)

    true_xywh = xyxy_to_xywh(true)
    if area is None:
        area_arr = true_xywh[:, 2] * true_xywh[:, 3]
    else:
        area_arr = _column("area", area, n).astype(np.float64)

    cols: dict[str, Any] = {
        "image_id": _ids("image_id", image_id, n),
        "annotation_id": _ids("annotation_id", annotation_id, n),
        "category_id": _ids("category_id", category_id, n),
        "method": [method] * n,
        "size": size_bucket(area_arr),
        "area": area_arr,
    }
    for prefix, b in (("rough", xyxy_to_xywh(rough)), ("pred", xyxy_to_xywh(pred)), ("true", true_xywh)):
        for j, c in enumerate("xywh"):
            cols[f"{prefix}_{c}"] = b[:, j]
    cols["iou"] = paired_iou(pred, true)
    dev = np.abs(pred - true)
    for j, e in enumerate(EDGE_NAMES):
        cols[f"dev_{e}"] = dev[:, j]
    for c in CORNER_NAMES:
        ix, iy = _CORNER_XY[c]
        cols[f"dev_{c}"] = np.hypot(dev[:, ix], dev[:, iy])
    for j, e in enumerate(EDGE_NAMES):
        cols[f"conf_{e}"] = conf[:, j]
    for key, value in (extra or {}).items():
        if key in cols:
            raise ValueError(f"extra column {key!r} clashes with a standard column")
        cols[key] = _column(key, value, n)
    return pd.DataFrame(cols)


# ------------------------------------------------------------------------------------ summaries


def _summary_row(g: pd.DataFrame) -> dict[str, float]:
    """Table 1 numbers (percent) for one group of boxes."""
    edges = g[DEV_EDGE_COLS].to_numpy(dtype=np.float64)
    corners = g[DEV_CORNER_COLS].to_numpy(dtype=np.float64)
    iou = g["iou"].to_numpy(dtype=np.float64)
    row = {
        "n_boxes": float(len(g)),
        "miou": 100.0 * iou.mean(),
        "iou_gt_0.9": 100.0 * (iou > 0.9).mean(),
        "edge_lt_1px": 100.0 * (edges < 1.0).mean(),
        "edge_lt_3px": 100.0 * (edges < 3.0).mean(),
        "corner_lt_1px": 100.0 * (corners < 1.0).mean(),
        "corner_lt_3px": 100.0 * (corners < 3.0).mean(),
        "edge_dev_mean_px": edges.mean(),
        "edge_dev_median_px": float(np.median(edges)),
    }
    for j, e in enumerate(EDGE_NAMES):
        row[f"{e}_lt_1px"] = 100.0 * (edges[:, j] < 1.0).mean()
    row["worse_gt_0.1"] = _worse_share(g, iou)
    return row


def _worse_share(g: pd.DataFrame, iou: np.ndarray) -> float:
    """Percent of boxes whose IoU with the truth is more than :data:`WORSE_BY` below their rough
    box's; NaN when the table has no rough boxes."""
    rough = g[["rough_x", "rough_y", "rough_w", "rough_h"]].to_numpy(np.float64) if "rough_x" in g else None
    if rough is None or not np.isfinite(rough).all():
        return float("nan")
    true = g[["true_x", "true_y", "true_w", "true_h"]].to_numpy(np.float64)
    rough_iou = paired_iou(xywh_to_xyxy(rough), xywh_to_xyxy(true))
    return 100.0 * float((rough_iou - iou > WORSE_BY).mean())


def summarize(df: pd.DataFrame, by: Iterable[str] = ("method",), buckets: bool = True) -> pd.DataFrame:
    """The paper's Table 1 (percent) per group, plus counts, pixel deviances and per-edge rates.

    One row per group and size (``size`` = "all", then "small"/"medium"/"large" when
    ``buckets``; empty buckets are left out rather than reported as NaN). The group keys
    come first, so ``summarize(df, by=("method", "dataset"))`` works on any extra column.
    """
    by = list(by)
    missing = [c for c in by + ["iou", *DEV_EDGE_COLS, *DEV_CORNER_COLS] if c not in df.columns]
    if missing:
        raise ValueError(f"summarize: the box table lacks column(s) {missing}")
    if buckets and "size" not in df.columns:
        raise ValueError("summarize: buckets=True needs the 'size' column of box_table()")
    rows: list[dict[str, Any]] = []
    groups = df.groupby(by, sort=False, dropna=False) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        base = dict(zip(by, key))
        if len(g):
            rows.append({**base, "size": ALL, **_summary_row(g)})
        if buckets:
            for bucket in SIZE_BUCKETS:
                sub = g[g["size"] == bucket]
                if len(sub):
                    rows.append({**base, "size": bucket, **_summary_row(sub)})
    columns = by + ["size", "n_boxes", *TABLE1_COLUMNS, *HARM_COLUMNS, *EXTRA_COLUMNS]
    out = pd.DataFrame(rows, columns=columns)
    out["n_boxes"] = out["n_boxes"].astype("int64")
    return out


def format_table(summary: pd.DataFrame, digits: int = 1, extra: bool = False) -> str:
    """A markdown table with the paper's headers (for README, reports and Prefect artifacts)."""
    value_cols = {**TABLE1_COLUMNS, **HARM_COLUMNS, **(EXTRA_COLUMNS if extra else {})}
    key_cols = [c for c in summary.columns if c not in value_cols and c not in EXTRA_COLUMNS
                and c not in HARM_COLUMNS and c != "n_boxes"]
    headers = key_cols + ["boxes"] + list(value_cols.values())
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for _, r in summary.iterrows():
        cells = [str(r[c]) for c in key_cols] + ["" if pd.isna(r["n_boxes"]) else str(int(r["n_boxes"]))]
        cells += ["" if pd.isna(r[c]) else f"{r[c]:.{digits}f}" for c in value_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/ ]+")


def metric_key(*parts: Any) -> str:
    """Join parts into a name MLflow accepts on every OS.

    MLflow allows alphanumerics, ``_ - . / space`` (and ``:`` except on Windows), and
    rejects names that are not normalised paths (``a//b``, ``../x``, leading ``/``).
    """
    cleaned = []
    for p in parts:
        s = _UNSAFE.sub("_", str(p)).strip(" /")
        s = re.sub(r"/+", "/", s)
        s = "/".join(seg for seg in s.split("/") if seg not in ("", ".", ".."))
        if s:
            cleaned.append(s)
    if not cleaned:
        raise ValueError(f"no usable metric name from {parts!r}")
    return "/".join(cleaned)


def summary_metrics(summary: "pd.Series | pd.DataFrame", prefix: str | None = None) -> dict[str, float]:
    """Flat ``{"<size>/<metric>": value}`` for MLflow, e.g. ``"all/iou_gt_0.9"``.

    Accepts one summary row or a whole summary; with several rows, keys also carry the
    non-size group values (``"snapper/large/miou"``) so no two rows collide.
    """
    rows = [summary] if isinstance(summary, pd.Series) else [r for _, r in summary.iterrows()]
    value_cols = ["n_boxes", *TABLE1_COLUMNS, *HARM_COLUMNS, *EXTRA_COLUMNS]
    out: dict[str, float] = {}
    for r in rows:
        keys = [] if isinstance(summary, pd.Series) else [
            r[c] for c in summary.columns if c not in value_cols and c != "size"
            and summary[c].nunique(dropna=False) > 1]
        size = r.get("size", ALL)
        for c in value_cols:
            if c in r.index and not pd.isna(r[c]):
                name = metric_key(*([prefix] if prefix else []), *keys, size, c)
                if name in out:
                    raise ValueError(f"summary_metrics: duplicate metric {name!r}")
                out[name] = float(r[c])
    return out


# ------------------------------------------------------------------------------- confidence


class ConfidenceReport(NamedTuple):
    """``deciles``: edge deviance per confidence bin (bin 0 = least confident);
    ``flagging``: share of bad edges caught by flagging the least confident k% of edges."""

    deciles: pd.DataFrame
    flagging: pd.DataFrame


def confidence_report(
    df: pd.DataFrame,
    bins: int = 10,
    flag_percents: Iterable[float] = (5, 10, 20, 30),
    bad_px: float = 3.0,
    by: Iterable[str] = ("method",),
    seed: int = 0,
) -> ConfidenceReport:
    """Is per-edge confidence useful for review? Edges pooled, per ``by`` group.

    An edge is *bad* when it is not within ``bad_px`` (``dev >= bad_px``, the complement of
    the "edge < 3 px" column). Flagging the lowest-confidence k% catches ``caught_pct`` of the
    bad edges; flagging k% at random catches k% in expectation (``random_pct``), so
    ``lift = caught_pct / random_pct`` says how much the confidence is worth. Confidence ties
    are broken at random (seeded) so that a constant confidence scores as random, not by
    row order. Edges without confidence (NaN) are left out and counted in ``n_no_conf``.
    """
    by = [c for c in by if c in df.columns]
    dec_rows: list[dict[str, Any]] = []
    flag_rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(seed)
    groups = df.groupby(by, sort=False, dropna=False) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        base = dict(zip(by, key))
        conf = g[CONF_COLS].to_numpy(dtype=np.float64).reshape(-1)
        dev = g[DEV_EDGE_COLS].to_numpy(dtype=np.float64).reshape(-1)
        ok = np.isfinite(conf)
        n_no_conf = int((~ok).sum())
        conf, dev = conf[ok], dev[ok]
        n = len(conf)
        if n == 0:
            continue
        order = np.lexsort((rng.random(n), conf))  # ascending confidence, random among ties
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        bin_idx = rank * bins // n
        bad = dev >= bad_px
        for b in range(bins):
            m = bin_idx == b
            if not m.any():
                continue
            dec_rows.append({**base, "bin": b, "n_edges": int(m.sum()),
                             "conf_min": conf[m].min(), "conf_max": conf[m].max(),
                             "conf_mean": conf[m].mean(), "dev_mean_px": dev[m].mean(),
                             "dev_median_px": float(np.median(dev[m])),
                             "edge_lt_1px": 100.0 * (dev[m] < 1.0).mean(),
                             "edge_lt_3px": 100.0 * (dev[m] < 3.0).mean(),
                             "bad_pct": 100.0 * bad[m].mean(), "n_no_conf": n_no_conf})
        n_bad = int(bad.sum())
        for k in flag_percents:
            n_flag = min(n, int(math.ceil(k / 100.0 * n)))
            flagged = order[:n_flag]
            caught = int(bad[flagged].sum())
            caught_pct = 100.0 * caught / n_bad if n_bad else float("nan")
            random_pct = 100.0 * n_flag / n
            flag_rows.append({**base, "flag_pct": float(k), "n_edges": n, "n_bad": n_bad,
                              "n_flagged": n_flag, "bad_caught": caught,
                              "caught_pct": caught_pct, "random_pct": random_pct,
                              "precision_pct": 100.0 * caught / n_flag if n_flag else float("nan"),
                              "base_rate_pct": 100.0 * n_bad / n,
                              "lift": caught_pct / random_pct if random_pct else float("nan"),
                              "n_no_conf": n_no_conf})
    return ConfidenceReport(pd.DataFrame(dec_rows), pd.DataFrame(flag_rows))
