"""Which workers' boxes are the same object: greedy IoU matching within one image.

Crowd-sourcing tools give each worker's boxes without saying which boxes of different
workers show the same object; the batch path's fusion (:func:`snapper.batch.fuse.fuse`)
needs that as an ``object_id``. Boxes are taken in input order; each joins the group of the
same class whose mean box it overlaps most, if that IoU is at least ``threshold`` and the
group has no box of the same worker yet (one worker's two boxes are two objects), else it
starts a group. Boxes without usable numbers are groups of their own (the batch path keeps
them with a reason). Agreement is the mean pairwise IoU of a group's boxes: 1 when every
worker drew the same box, lower the more they disagree.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Hashable

import numpy as np

from snapper.formats.common import is_box
from snapper.geometry import paired_iou, xywh_to_xyxy

IOU_THRESHOLD = 0.5


def group_boxes(boxes: list[Any], classes: list[Hashable], workers: list[Any],
                threshold: float = IOU_THRESHOLD) -> list[int]:
    """The group index (0, 1, ... in order of first member) of every box."""
    groups: list[dict[str, Any]] = []  # {"class", "workers", "boxes"}
    out = []
    for box, cls, worker in zip(boxes, classes, workers):
        best, best_iou = None, threshold
        if is_box(box):
            xyxy = xywh_to_xyxy(np.array(box, dtype=np.float64))
            for g, grp in enumerate(groups):
                if grp["class"] != cls or not grp["boxes"] or (worker is not None and worker in grp["workers"]):
                    continue
                iou = float(paired_iou(xyxy, np.mean(grp["boxes"], axis=0)[None])[0])
                if iou >= best_iou:
                    best, best_iou = g, iou
        if best is None:
            groups.append({"class": cls, "workers": set(), "boxes": []})
            best = len(groups) - 1
        if is_box(box):
            groups[best]["boxes"].append(xywh_to_xyxy(np.array(box, dtype=np.float64))[0])
        if worker is not None:
            groups[best]["workers"].add(worker)
        out.append(best)
    return out


def agreement(boxes: list[Any]) -> float | None:
    """Mean pairwise IoU of the usable boxes; None with fewer than two."""
    usable = [xywh_to_xyxy(np.array(b, dtype=np.float64))[0] for b in boxes if is_box(b)]
    if len(usable) < 2:
        return None
    pairs = list(combinations(usable, 2))
    ious = paired_iou(np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]))
    return round(float(ious.mean()), 4)
