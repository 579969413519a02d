"""Merging chunk results into the outputs: the accounting check, the review list, the
snapped COCO file, ``boxes.parquet``, ``summary.json``, ``review.csv`` and, with a review
budget, ``review_edges.csv``.

Every file is written atomically and ``snapped.json`` last, so its presence means the whole
output is there; nothing is written unless every input annotation id comes out exactly once.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from snapper.atomic import atomic_write_csv, atomic_write_json, atomic_write_parquet
from snapper.batch.fuse import fuse
from snapper.batch.rough import RoughInput, is_int, is_int64, load_rough, rough_numbers
from snapper.batch.schema import (
    BOXES_PARQUET,
    CONF_COLS,
    GUARD_COLLAPSED,
    KEPT,
    OUTPUT_JSON,
    PRED_COLS,
    REVIEW_CSV,
    REVIEW_EDGES_CSV,
    ROUGH_COLS,
    SNAPPED,
    SUMMARY_JSON,
    TABLE1_CSV,
    AccountingError,
    clean_text_columns,
    make_row,
    num,
    rows_frame,
)
from snapper.batch.truth import truth_table
from snapper.config import BatchConfig
from snapper.data.coco import short
from snapper.geometry import EDGE_NAMES, xywh_to_xyxy
from snapper.inference.guard import COLLAPSED, MOVED
from snapper.overrides import to_dict

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
REVIEW_COLUMNS = ["annotation_id", "image_id", "file_name", "status", "reason", "review", *CONF_COLS, "moved_frac"]
REVIEW_EDGE_COLUMNS = ["annotation_id", "image_id", "file_name", "edge", "confidence", "snapped_px", "rough_px"]


def _orphan_rows(inp: RoughInput) -> pd.DataFrame:
    """Annotations of unknown images: in no chunk, kept here."""
    rows = []
    for pos in inp.orphans:
        a = inp.annotations[pos]
        iid = a.get("image_id")
        too_big = is_int(iid) and not is_int64(iid)
        detail = f"image_id {short(iid)} " + ("does not fit a 64-bit integer" if too_big else "is not in 'images'")
        rows.append(make_row(a["id"], iid if is_int64(iid) else None, "unknown_image", rough_numbers(a.get("bbox")),
                             detail=detail))
    return rows_frame(rows)


def collect_rows(inp: RoughInput, chunk_results: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """All rows in input order; :class:`AccountingError` unless every input annotation id
    appears exactly once over the chunk results plus the annotations of unknown images."""
    frames = [pd.read_parquet(p) for p in chunk_results]
    frames.append(_orphan_rows(inp))
    frames = [f for f in frames if len(f)]
    df = clean_text_columns(pd.concat(frames, ignore_index=True) if frames else rows_frame([]))
    got = Counter(df["annotation_id"].tolist())
    want = inp.annotation_ids
    dup = [i for i, n in got.items() if n > 1]
    missing = [i for i in want if i not in got]
    extra_ids = sorted(set(got) - set(want))
    if dup or missing or extra_ids:
        raise AccountingError(
            f"{inp.path}: results do not account for every annotation exactly once: "
            f"{len(missing)} missing (e.g. {missing[:5]}), {len(dup)} duplicated (e.g. {dup[:5]}), "
            f"{len(extra_ids)} not in the input (e.g. {extra_ids[:5]})")
    return df.set_index("annotation_id").loc[want].reset_index()


def review(df: pd.DataFrame, cfg: BatchConfig) -> pd.DataFrame:
    """``needs_review`` and its reasons (``low_confidence:<edge>``, ``moved``, ``guarded:<edge>``
    (an edge the broken-box guard kept at its rough position), ``kept``)."""
    conf = df[CONF_COLS].to_numpy(dtype=np.float64)
    snapped = (df["status"] == SNAPPED).to_numpy()
    with np.errstate(invalid="ignore"):
        low = snapped & (conf < cfg.review_threshold).any(axis=1)
        moved = snapped & (df["moved_frac"].to_numpy() > cfg.review_moved_frac)
    kept = (~snapped) & (df["reason"] != "crowd").to_numpy()
    guarded = [_edges(g) if s else [] for g, s in zip(_guarded_column(df), snapped)]
    reasons = []
    for lo, mo, ke, c, ge in zip(low, moved, kept, conf, guarded):
        r = [f"low_confidence:{e}" for e, v in zip(EDGE_NAMES, c) if lo and v < cfg.review_threshold]
        r += ["moved"] if mo else []
        r += [f"guarded:{e}" for e in ge if e]
        r += ["kept"] if ke else []
        reasons.append(";".join(r))
    df = df.copy()
    df["needs_review"] = low | moved | kept | np.array([any(ge) for ge in guarded], dtype=bool)
    df["review"] = reasons
    return df


def review_edges(df: pd.DataFrame, budget: float) -> pd.DataFrame:
    """The snapped edges a person should look at within ``budget`` (``BatchConfig.review_budget``:
    a count, or a share of the snapped edges), least likely right first: ascending confidence,
    ties in input order. Columns :data:`REVIEW_EDGE_COLUMNS`; ``snapped_px`` / ``rough_px``: the
    edge's coordinate (x for left/right, y for top/bottom) in the snapped and the rough box.

    Confidence routes an edge to a person and never vetoes the model: boxes that were kept are
    not listed (nothing was snapped), and an edge without a confidence (a model without one)
    cannot be ranked and is left out. With a calibrated model the sum of ``1 - confidence``
    over the list is the number of wrong edges it should catch."""
    snapped = df[(df["status"] == SNAPPED).to_numpy()]
    conf = snapped[CONF_COLS].to_numpy(np.float64).reshape(-1)
    n_edges = len(conf)
    count = int(budget) if budget >= 1 else math.ceil(budget * n_edges)
    box = np.repeat(np.arange(len(snapped)), len(EDGE_NAMES))
    edge = np.tile(np.arange(len(EDGE_NAMES)), len(snapped))
    order = np.lexsort((edge, box, conf))
    order = order[np.isfinite(conf[order])][:count]
    b, e = box[order], edge[order]
    pred = xywh_to_xyxy(snapped[PRED_COLS].to_numpy(np.float64))
    rough = xywh_to_xyxy(snapped[ROUGH_COLS].to_numpy(np.float64))
    return pd.DataFrame({"annotation_id": snapped["annotation_id"].to_numpy()[b],
                         "image_id": snapped["image_id"].to_numpy()[b],
                         "file_name": snapped["file_name"].to_numpy()[b] if "file_name" in snapped else None,
                         "edge": np.asarray(EDGE_NAMES, dtype=object)[e], "confidence": conf[order],
                         "snapped_px": pred[b, e], "rough_px": rough[b, e]}, columns=REVIEW_EDGE_COLUMNS)


def budget_summary(edges: pd.DataFrame, budget: float, n_snapped_edges: int) -> dict[str, Any]:
    """What ``summary.json`` says of a review budget: the edges listed and ``expected_wrong``,
    the number of them the confidence expects to be wrong (not within ``model.confidence_px``)."""
    return {"budget": budget, "n_edges": len(edges), "snapped_edges": n_snapped_edges,
            "expected_wrong": round(float((1.0 - edges["confidence"]).sum()), 3), "file": REVIEW_EDGES_CSV}


def _has_segmentation(a: dict[str, Any]) -> bool:
    seg = a.get("segmentation")
    return bool(seg) and (not isinstance(seg, list) or any(seg))


def output_annotations(inp: RoughInput, df: pd.DataFrame) -> list[dict[str, Any]]:
    """The input annotations, snapped ones with the new bbox (and area unless it is a mask
    area), each with its ``"snapper"`` object."""
    anns = []
    for a, r in zip(inp.annotations, df.itertuples(index=False)):
        new = dict(a)
        conf = [getattr(r, c) for c in CONF_COLS]
        if r.status == SNAPPED:
            box = [round(float(getattr(r, c)), 3) for c in PRED_COLS]
            new["bbox"] = box
            if not (_has_segmentation(a) and "area" in a):
                new["area"] = round(box[2] * box[3], 3)
        new["snapper"] = {
            "status": r.status, "reason": r.reason, "detail": r.detail,
            "rough_bbox": a.get("bbox") if isinstance(a.get("bbox"), list) else None,
            "confidence": ({e: num(c) for e, c in zip(EDGE_NAMES, conf)} if r.status == SNAPPED else None),
            "needs_review": bool(r.needs_review), "review": [x for x in r.review.split(";") if x],
            "moved_px": num(r.moved_px, 3), "moved_frac": num(r.moved_frac), "iou_with_rough": num(r.iou_with_rough),
            "guard": _guard(r.status, r.reason, getattr(r, "guarded_edges", None)),
        }
        anns.append(new)
    return anns


def _guarded_column(df: pd.DataFrame) -> list[Any]:
    """The rows' ``guarded_edges`` (rows of results written before the guard have none)."""
    return df["guarded_edges"].tolist() if "guarded_edges" in df else [None] * len(df)


def _edges(guarded_edges: Any) -> list[str]:
    """``"left,bottom"`` -> ``["left", "bottom"]``; None or NaN -> []."""
    return [e for e in guarded_edges.split(",") if e] if isinstance(guarded_edges, str) else []


def _guard(status: str, reason: str | None, guarded_edges: str | None) -> dict[str, Any] | None:
    """The broken-box guard's verdict as ``snapper snap`` prints it: None, or ``{"reason":
    "collapsed"|"moved", "edges": [...]}``."""
    if status != SNAPPED and reason == GUARD_COLLAPSED:
        return {"reason": COLLAPSED, "edges": list(EDGE_NAMES)}
    edges = _edges(guarded_edges) if status == SNAPPED else []
    return {"reason": MOVED, "edges": edges} if edges else None


def guard_counts(df: pd.DataFrame) -> dict[str, Any]:
    """Boxes the broken-box guard gave back rough: whole (``collapsed``, kept), or some edges
    (``moved``, still snapped) and how often each edge."""
    per_box = [_edges(g) for g, s in zip(_guarded_column(df), df["status"] == SNAPPED) if s]
    edges = [e for box in per_box for e in box]
    return {"collapsed": int((df["reason"] == GUARD_COLLAPSED).sum()), "moved": sum(bool(b) for b in per_box),
            "edges": {e: edges.count(e) for e in EDGE_NAMES}}


def quantiles(v: np.ndarray) -> dict[str, float | None]:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0}
    out: dict[str, Any] = {"n": int(len(v)), "mean": num(v.mean())}
    out.update({f"q{int(round(q * 100)):02d}": num(np.quantile(v, q)) for q in QUANTILES})
    return out


def build_summary(inp: RoughInput, df: pd.DataFrame, cfg: BatchConfig, fused: list[dict[str, Any]],
                  out_dir: Path) -> dict[str, Any]:
    """Counts per status and reason, confidence and movement quantiles, the settings."""
    review_reasons = Counter(k for rs in df["review"] for k in {x.split(":")[0] for x in rs.split(";") if x})
    return {
        "input": inp.path, "input_sha256": inp.sha256, "output": str(out_dir / OUTPUT_JSON),
        "n_images": len(inp.data["images"]), "n_annotations": len(df),
        "status": {s: int((df["status"] == s).sum()) for s in (SNAPPED, KEPT)},
        "reasons": {k: int(v) for k, v in Counter(df["reason"].dropna()).most_common()},
        "needs_review": int(df["needs_review"].sum()),
        "review_reasons": dict(review_reasons),
        "guard": guard_counts(df),
        "confidence": {**{e: quantiles(df[c]) for e, c in zip(EDGE_NAMES, CONF_COLS)},
                       "min_edge": quantiles(df[CONF_COLS].min(axis=1, skipna=False))},
        "moved": {"moved_px": quantiles(df["moved_px"]), "moved_frac": quantiles(df["moved_frac"]),
                  "iou_with_rough": quantiles(df["iou_with_rough"]),
                  "n_over_review_frac": int((df["moved_frac"] > cfg.review_moved_frac).sum())},
        "fused_objects": len(fused), "fused_needs_review": sum(f["needs_review"] for f in fused),
        "config": to_dict(cfg),
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _truth_summary(df: pd.DataFrame, truth: str | os.PathLike[str], out_dir: Path) -> dict[str, Any]:
    table, counts = truth_table(df, truth)
    if len(table):
        atomic_write_csv(table, out_dir / TABLE1_CSV)
    return {"file": str(truth), **counts, "table1": json.loads(table.to_json(orient="records")) if len(table) else []}


def merge_chunks(
    ann_file: str | os.PathLike[str],
    chunk_results: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    cfg: BatchConfig | None = None,
    truth: str | os.PathLike[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Check the accounting, then write ``snapped.json``, ``boxes.parquet``, ``summary.json``,
    ``review.csv`` and, with ``cfg.review_budget``, ``review_edges.csv`` atomically; returns the
    path of ``snapped.json``.

    Raises :class:`AccountingError` unless every input annotation id appears exactly once
    over the chunk results plus the annotations of unknown images.
    """
    cfg = cfg or BatchConfig()
    out_dir = Path(out_dir)
    inp = load_rough(ann_file)
    df = review(collect_rows(inp, chunk_results), cfg)
    # a name that is not a string (e.g. 5) is reported as its JSON text: one column type for Parquet
    names = {i: (n if isinstance(n := im.get("file_name"), str) or n is None else json.dumps(n))
             for i, im in inp.images.items()}
    df["file_name"] = [names.get(i) if i is not pd.NA else None for i in df["image_id"]]
    out = dict(inp.data)
    out["annotations"] = output_annotations(inp, df)
    fused = fuse(inp, df, cfg)
    if fused:
        out["snapper_fused"] = fused
    summary = build_summary(inp, df, cfg, fused, out_dir)
    if truth is not None:
        summary["truth"] = _truth_summary(df, truth, out_dir)
    summary.update(extra or {})
    atomic_write_parquet(df, out_dir / BOXES_PARQUET)
    atomic_write_csv(df.loc[df["needs_review"], REVIEW_COLUMNS], out_dir / REVIEW_CSV)
    if cfg.review_budget is not None:
        edges = review_edges(df, cfg.review_budget)
        atomic_write_csv(edges, out_dir / REVIEW_EDGES_CSV)
        summary["review_budget"] = budget_summary(edges, cfg.review_budget, 4 * int((df["status"] == SNAPPED).sum()))
    else:  # a list from an earlier run with a budget would pass for this run's
        (out_dir / REVIEW_EDGES_CSV).unlink(missing_ok=True)
    atomic_write_json(out_dir / SUMMARY_JSON, summary, indent=2, default=_json_default)
    atomic_write_json(out_dir / OUTPUT_JSON, out, indent=None)  # last: its presence means "done"
    return out_dir / OUTPUT_JSON
