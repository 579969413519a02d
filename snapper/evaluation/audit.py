"""Dataset audit, the pure part: how likely each annotated edge is misplaced, boxes ranked by
it, and the tools to measure that honestly (boxes corrupted on purpose, average precision).

The audit snaps every box of a dataset believed correct, using the annotated box as the rough
box, and compares each annotated edge with the model's edge (``snapper.batch.audit`` runs it
and writes the outputs). An edge is suspect when the model puts it far from the annotation and
is confident about its own position. Per edge (``AuditConfig.score``):

* ``delta_px`` = |proposed - annotated| (px); ``delta_frac`` = ``delta_px`` / the annotated
  box's extent on the edge's axis (width for left/right, height for top/bottom);
* suspicion ``conf_frac`` (default) = confidence x max(0, ``delta_px`` - ``min_px``) / extent:
  the share of the box the edge seems to be off by, as far as the model can tell; ``frac``,
  ``px``, ``conf_px`` are the variants compared when it was chosen (experiments/audit.py);
* a box's score is its largest edge suspicion (``box_score="max"``) or the sum of its two
  largest (``top2``); its suspect edges are those with at least ``suspect_ratio`` of the
  largest (the largest always), suspicion > 0.

Boxes that could not be snapped have no score (NaN): they rank after every scored box and are
never flagged. Nothing here reads images or runs a model.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from snapper.config import AUDIT_BOX_SCORES, AUDIT_SCORES
from snapper.geometry import EDGE_NAMES

AXIS = np.array([0, 1, 0, 1])  # the extent each edge is measured against: width (0) or height (1)


def edge_deltas(annotated: np.ndarray, proposed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``delta_px`` (n, 4), ``delta_frac`` (n, 4)) of xyxy boxes, edges in :data:`EDGE_NAMES`
    order; the extent is the annotated box's (NaN where it is not positive)."""
    a = np.asarray(annotated, np.float64).reshape(-1, 4)
    p = np.asarray(proposed, np.float64).reshape(-1, 4)
    extent = np.stack([a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]], axis=1)[:, AXIS]
    extent = np.where(extent > 0, extent, np.nan)
    px = np.abs(p - a)
    return px, px / extent


def edge_suspicion(delta_px: np.ndarray, delta_frac: np.ndarray, confidence: np.ndarray,
                   score: str = "conf_frac", min_px: float = 1.0) -> np.ndarray:
    """Per-edge suspicion (n, 4), larger = more likely misplaced (see the module doc); NaN where
    an input is. An edge without a confidence (a model that gives none) counts as confidence 1."""
    if score not in AUDIT_SCORES:
        raise ValueError(f"score must be one of {AUDIT_SCORES}, got {score!r}")
    px = np.asarray(delta_px, np.float64)
    frac = np.asarray(delta_frac, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        excess = np.maximum(px - min_px, 0.0)
        base = excess if score.endswith("px") else np.where(px > 0, excess / px, 0.0) * frac
        if score.startswith("conf_"):
            conf = np.asarray(confidence, np.float64)
            base = base * conf
    return base


def box_scores(suspicion: np.ndarray, how: str = "max") -> np.ndarray:
    """Each box's score from its edge suspicions: the largest (``max``), or the sum of the two
    largest (``top2``: a box with two edges off scores above one with one); NaN when the box has
    none (not snapped)."""
    if how not in AUDIT_BOX_SCORES:
        raise ValueError(f"box score must be one of {AUDIT_BOX_SCORES}, got {how!r}")
    s = np.asarray(suspicion, np.float64).reshape(-1, 4)
    out = np.full(len(s), np.nan)
    has = np.isfinite(s).any(axis=1)
    top = np.sort(np.where(np.isfinite(s[has]), s[has], 0.0), axis=1)
    out[has] = top[:, -1] + (top[:, -2] if how == "top2" else 0.0)
    return out


def suspect_edges(suspicion: np.ndarray, ratio: float = 0.5) -> list[list[str]]:
    """The suspect edges of each box: suspicion > 0 and at least ``ratio`` x the box's score."""
    s = np.asarray(suspicion, np.float64).reshape(-1, 4)
    top = box_scores(s, "max")
    out = []
    for row, t in zip(s, top):
        if not np.isfinite(t) or t <= 0:
            out.append([])
            continue
        out.append([e for e, v in zip(EDGE_NAMES, row) if np.isfinite(v) and v > 0 and v >= ratio * t])
    return out


def rank(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each score, largest first, ties in input order; NaN scores rank after
    every finite one (in input order)."""
    s = np.asarray(scores, np.float64)
    key = np.where(np.isfinite(s), -s, np.inf)
    order = np.argsort(key, kind="stable")
    out = np.empty(len(s), dtype=np.int64)
    out[order] = np.arange(1, len(s) + 1)
    return out


def flag_count(flag: float, n_scored: int) -> int:
    """How many boxes to flag: ``flag`` >= 1 is a count, in (0, 1) a share of the scored boxes
    (rounded up); never more than there are scored boxes."""
    n = int(flag) if flag >= 1 else math.ceil(flag * n_scored)
    return max(0, min(n, n_scored))


# ----------------------------------------------------------------------------- measuring an audit


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of ranking by ``scores`` (largest first, ties in input order) at finding
    ``positive``: the mean over every positive of the precision at its rank; a positive without
    a finite score is never found and adds 0 (the denominator counts every positive)."""
    pos = np.asarray(positive, bool)
    if not pos.any():
        return math.nan
    s = np.asarray(scores, np.float64)
    order = np.argsort(np.where(np.isfinite(s), -s, np.inf), kind="stable")
    found = pos[order] & np.isfinite(s[order])
    hits = np.cumsum(found)
    precision = hits / np.arange(1, len(s) + 1)
    return float(precision[found].sum() / pos.sum())


def recall_at(scores: np.ndarray, positive: np.ndarray, flagged: float) -> float:
    """Share of ``positive`` among the boxes flagged: the top :func:`flag_count` of the boxes
    with a finite score."""
    pos = np.asarray(positive, bool)
    if not pos.any():
        return math.nan
    s = np.asarray(scores, np.float64)
    k = flag_count(flagged, int(np.isfinite(s).sum()))
    top = np.argsort(np.where(np.isfinite(s), -s, np.inf), kind="stable")[:k]
    return float(pos[top].sum() / pos.sum())


def _corruptible(a: dict[str, Any]) -> bool:
    b = a.get("bbox")
    if a.get("iscrowd") or not isinstance(b, list) or len(b) != 4:
        return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b):
        return False
    return b[2] > 0 and b[3] > 0


def _move(xyxy: list[float], edge: int, dist: float, sign: float, limit: float | None) -> float:
    """The signed move of one edge: ``sign`` x ``dist``, turned the other way when it would leave
    the image (``limit`` its width or height; None: unknown)."""
    new = xyxy[edge] + sign * dist
    if limit is not None and not 0.0 <= new <= limit:
        sign = -sign
    return sign * dist


def corrupt_boxes(coco: dict[str, Any], frac: float, lo: float = 0.03, hi: float = 0.15,
                  seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A copy of ``coco`` with ``frac`` of its boxes corrupted (seeded), and what was done.

    Candidates are the annotations with a finite box of positive size that are not crowd;
    ``round(frac * n)`` of them (at least one when ``frac`` > 0) get one or two edges (even
    odds) moved, each by a share of the box's extent on its axis drawn from U(lo, hi), in or
    out (even odds; turned inward when out would leave the image). Returns the corrupted
    COCO dict and one record per corrupted annotation: ``{"annotation_id", "edges": {edge:
    signed move in px}, "frac": {edge: move / extent}, "original": [x, y, w, h]}``."""
    if not 0.0 <= frac <= 1.0 or not 0.0 < lo <= hi:
        raise ValueError(f"need 0 <= frac <= 1 and 0 < lo <= hi, got frac={frac}, lo={lo}, hi={hi}")
    out = copy.deepcopy(coco)
    sizes = {im.get("id"): (im.get("width"), im.get("height")) for im in out.get("images", [])}
    cands = [a for a in out.get("annotations", []) if _corruptible(a)]
    n = min(len(cands), max(1 if frac > 0 else 0, round(frac * len(cands))))
    rng = np.random.default_rng(seed)
    records = []
    for i in sorted(rng.choice(len(cands), size=n, replace=False).tolist()):
        a = cands[i]
        x, y, w, h = (float(v) for v in a["bbox"])
        xyxy = [x, y, x + w, y + h]
        size = sizes.get(a.get("image_id"), (None, None))
        edges = sorted(rng.choice(4, size=int(rng.integers(1, 3)), replace=False).tolist())
        moved, fracs = {}, {}
        for e in edges:
            share = float(rng.uniform(lo, hi))
            sign = float(rng.choice([-1.0, 1.0]))
            limit = size[AXIS[e]]
            d = _move(xyxy, e, share * (w, h)[AXIS[e]], sign, float(limit) if isinstance(limit, (int, float)) else None)
            moved[EDGE_NAMES[e]], fracs[EDGE_NAMES[e]] = d, share
        new = list(xyxy)
        for e, d in moved.items():
            new[EDGE_NAMES.index(e)] += d
        a["bbox"] = [new[0], new[1], new[2] - new[0], new[3] - new[1]]
        if "area" in a and not a.get("segmentation"):
            a["area"] = a["bbox"][2] * a["bbox"][3]
        records.append({"annotation_id": a.get("id"), "edges": moved, "frac": fracs, "original": [x, y, w, h]})
    return out, records
