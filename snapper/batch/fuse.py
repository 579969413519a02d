"""Fusing crowd-sourced boxes: annotations that share ``BatchConfig.fuse_key`` on one image
are several workers' boxes of one object, and get one box together.

The fused box is the edge-wise confidence-weighted mean of the members' *snapped* edges
(each edge is decoded on its own, so each is averaged on its own), with the weighted spread
per edge telling how much the workers' snapped boxes disagree. The members' own boxes are
not replaced: the fused list is an addition to the output.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pandas as pd

from snapper.batch.rough import RoughInput
from snapper.batch.schema import CONF_COLS, PRED_COLS, SNAPPED, num
from snapper.config import BatchConfig
from snapper.crop import tidy_boxes
from snapper.geometry import EDGE_NAMES, xywh_to_xyxy, xyxy_to_xywh


def _groups(inp: RoughInput, key: str) -> dict[tuple[Any, str], list[dict[str, Any]]]:
    """(image id, object id as JSON) -> member annotations, in file order."""
    groups: dict[tuple[Any, str], list[dict[str, Any]]] = defaultdict(list)
    for a in inp.annotations:
        v = a.get(key)
        if v is None or isinstance(v, (dict, list)):
            continue
        groups[(a.get("image_id"), json.dumps(v))].append(a)
    return groups


def _majority_category(members: list[dict[str, Any]]) -> Any:
    """The most common category; ties go to the smallest (ordered by type, then value)."""
    cats = Counter(a.get("category_id") for a in members)
    top = max(cats.values())
    return min((c for c, n in cats.items() if n == top), key=lambda c: (str(type(c)), c))


def fuse_snapped(snap: pd.DataFrame, cfg: BatchConfig) -> dict[str, Any]:
    """bbox, area, confidence, spread and review flag of the snapped members' rows."""
    edges = xywh_to_xyxy(snap[PRED_COLS].to_numpy(dtype=np.float64))
    conf = snap[CONF_COLS].to_numpy(dtype=np.float64)
    wts = np.where(np.isfinite(conf), np.clip(conf, 1e-6, None), 1.0)
    mean = (wts * edges).sum(0) / wts.sum(0)
    spread = np.sqrt((wts * (edges - mean) ** 2).sum(0) / wts.sum(0))
    # Edge-wise means of a hopeless crop can cross; keep the box >= 1 px as snapping does.
    box = xyxy_to_xywh(tidy_boxes(mean[None], float(snap["width"].iloc[0]), float(snap["height"].iloc[0])))[0]
    conf_mean = np.nanmean(conf, axis=0) if np.isfinite(conf).any() else np.full(4, np.nan)
    extent = np.array([box[2], box[3], box[2], box[3]])
    return {
        "bbox": [round(float(v), 3) for v in box], "area": round(float(box[2] * box[3]), 3),
        "confidence": {e: num(c) for e, c in zip(EDGE_NAMES, conf_mean)},
        "spread_px": {e: num(s, 3) for e, s in zip(EDGE_NAMES, spread)},
        "needs_review": bool((conf_mean < cfg.review_threshold).any()
                             or (spread > cfg.review_moved_frac * np.maximum(extent, 1e-9)).any()),
    }


def fuse(inp: RoughInput, df: pd.DataFrame, cfg: BatchConfig) -> list[dict[str, Any]]:
    """One fused entry per (image, object) over the workers' snapped boxes; [] without a key."""
    key = cfg.fuse_key
    if not key:
        return []
    rows = df.set_index("annotation_id")
    fused = []
    for (image_id, _), members in _groups(inp, key).items():
        ids = [a["id"] for a in members]
        sub = rows.loc[ids]
        snap = sub[sub["status"] == SNAPPED]
        entry: dict[str, Any] = {
            "object_id": members[0][key], "image_id": image_id, "category_id": _majority_category(members),
            "annotation_ids": ids, "n_snapped": int(len(snap)), "bbox": None, "area": None, "iscrowd": 0,
            "confidence": None, "spread_px": None, "needs_review": True,
        }
        if len(snap):
            entry.update(fuse_snapped(snap, cfg))
        fused.append(entry)
    return fused
