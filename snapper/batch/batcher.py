"""The cross-image batcher: crops of consecutive images gathered into full model batches.

Images have one to hundreds of boxes; running the model per image would leave it starved on
small images and split big ones badly. Crops queue up across images, every forward pass
takes exactly ``batch_size`` of them, and an image's rows are emitted as soon as its last
crop is predicted (its crops are freed then).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from snapper.batch.schema import CONF_COLS, GUARD_COLLAPSED, PRED_COLS, make_row
from snapper.crop import CropGeometry
from snapper.geometry import paired_iou, xyxy_to_xywh
from snapper.inference.guard import Guard
from snapper.inference.snap import Snapper


class Batcher:
    """Feed it items of :class:`snapper.batch.image_work.ImageCrops` with :meth:`add`; :meth:`finish`
    runs what is left and returns every row (kept rows first as they arrive). Batches are
    ``snapper.settings.batch_size`` crops, read out by :meth:`snapper.inference.snap.Snapper.read_out`."""

    def __init__(self, snapper: Snapper):
        self.snapper, self.bs = snapper, snapper.settings.batch_size
        self.items: list[dict[str, Any]] = []
        self.queue: list[tuple[int, torch.Tensor]] = []  # (item index, crops) not yet run
        self.queued = 0
        self.rows: list[dict[str, Any]] = []
        self.forward_s = 0.0

    def add(self, item: dict[str, Any]) -> None:
        self.rows += item["kept"]
        if item["crops"] is None or not len(item["crops"]):
            return
        n = len(item["crops"])
        item["boxes"], item["conf"], item["done"] = np.zeros((n, 4)), np.zeros((n, 4)), 0
        item["guard"] = Guard.none(n)
        self.items.append(item)
        self.queue.append((len(self.items) - 1, item["crops"]))
        self.queued += n
        while self.queued >= self.bs:
            self._run(self.bs)

    def finish(self) -> list[dict[str, Any]]:
        while self.queued:
            self._run(min(self.bs, self.queued))
        return self.rows

    def _take(self, n: int) -> tuple[list[torch.Tensor], list[tuple[int, int, int]]]:
        """The next ``n`` queued crops: (parts, [(item index, first crop, count)]), an item at most once."""
        parts, owners, taken = [], [], 0
        while taken < n:
            idx, crops = self.queue[0]
            item = self.items[idx]
            k = min(n - taken, len(crops))
            start = len(item["crops"]) - len(crops)
            parts.append(crops[:k])
            owners.append((idx, start, k))
            taken += k
            if k == len(crops):
                self.queue.pop(0)
            else:
                self.queue[0] = (idx, crops[k:])
        return parts, owners

    def _run(self, n: int) -> None:
        """One forward over crops of several images: each crop mapped back to its own image
        (and, with two passes, its strips cut from its own decoded image)."""
        parts, owners = self._take(n)
        batch = torch.cat(parts) if len(parts) > 1 else parts[0]
        items = [self.items[idx] for idx, _, _ in owners]
        counts = [k for _, _, k in owners]
        geo = CropGeometry.concat([it["geometry"][start : start + k] for it, (_, start, k) in zip(items, owners)])
        size = np.repeat(np.array([it["size"] for it in items], dtype=np.float64), counts, axis=0)
        owner = np.repeat(np.arange(len(items)), counts)
        if self.snapper.device.type == "cuda":
            batch = batch.pin_memory()
        rough = np.concatenate([it["rough_xyxy"][start : start + k] for it, (_, start, k) in zip(items, owners)])
        t = time.perf_counter()
        out = self.snapper.read_out(batch, geo, size[:, 0], size[:, 1], [it.get("source") for it in items], owner,
                                    rough=rough)
        self.forward_s += time.perf_counter() - t
        self.queued -= n
        off = 0
        for item, (idx, start, k) in zip(items, owners):
            span = slice(start, start + k)
            item["boxes"][span], item["conf"][span] = out.boxes[off : off + k], out.confidence[off : off + k]
            part = out.guard[off : off + k]
            item["guard"].collapsed[span], item["guard"].edges[span] = part.collapsed, part.edges
            item["done"] += k
            off += k
            if item["done"] == len(item["crops"]):
                self._emit(item)
                self.items[idx] = {}  # free the crops

    def _emit(self, item: dict[str, Any]) -> None:
        w, h = item["size"]
        snapped, rough_c = item["boxes"], item["rough_xyxy"]
        iou = paired_iou(snapped, rough_c)
        delta = np.abs(snapped - rough_c)
        extent = np.maximum(rough_c[:, [2, 3, 2, 3]] - rough_c[:, [0, 1, 0, 1]], 1e-9)
        xywh = xyxy_to_xywh(snapped)
        guard: Guard = item["guard"]
        for j, ann_id in enumerate(item["ann_ids"]):
            ok = np.isfinite(snapped[j]).all()
            reason, detail = (None, None) if ok else ("snap_failed", "non-finite model output")
            if ok and guard.collapsed[j]:
                reason, detail = GUARD_COLLAPSED, "the snapped box collapsed or its edges crossed: rough box kept"
            r = make_row(ann_id, item["image_id"], reason, item["rough"][j], detail, (w, h))
            if reason is None:
                r.update(zip(PRED_COLS, xywh[j].tolist()))
                r["moved_px"] = float(delta[j].max())
                r["moved_frac"] = float((delta[j] / extent[j]).max())
                r["iou_with_rough"] = float(iou[j])
                r["guarded_edges"] = ",".join(guard.edge_names(j)) or None
            r.update(zip(CONF_COLS, item["conf"][j].tolist()))
            self.rows.append(r)
