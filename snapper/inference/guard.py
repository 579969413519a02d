"""The broken-box guard: a snapped box is never worse-shaped than the rough box it came from.

A model can decode crossed edges (the bottom above the top) or throw an edge far away on a crop
unlike anything it was trained on; a fine-tuned model on a user's data does it more often. The
read-out (:meth:`snapper.inference.snap.Snapper.read_out`) therefore checks every box against
its rough box, after the (optional) zoom-in pass, and falls back where the model cannot be right:

* ``collapsed``: the snapped width or height is below ``max(2 px, 0.25 x`` the rough box's extent
  on that axis``)`` (crossed edges end 1 px wide after :func:`snapper.crop.tidy_boxes`): the
  whole rough box is returned;
* ``moved``: otherwise, an edge that moved more than ``SnapSettings.max_edge_move`` x the rough
  box's extent on its axis keeps its rough position (the paper's jitter moves an edge by at most
  ~0.17 of the extent, so the default 0.35 is twice what training could explain).

A guarded edge keeps the model's confidence (numbers stay numbers for downstream code) and is
marked in the :class:`Guard` every entry point reports. A non-finite box is left alone: the
callers report it as a failure of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from snapper.geometry import EDGE_NAMES

COLLAPSED, MOVED = "collapsed", "moved"
MIN_SIZE_PX = 2.0  # a snapped box thinner than this (or than MIN_SIZE_FRAC of the rough box) collapsed
MIN_SIZE_FRAC = 0.25


@dataclass
class Guard:
    """The guard's verdict for N boxes: ``collapsed`` (N,) whole rough box returned; ``edges``
    (N, 4) edges holding their rough position (all four for a collapsed box), left, top, right,
    bottom."""

    collapsed: np.ndarray
    edges: np.ndarray

    @classmethod
    def none(cls, n: int) -> "Guard":
        """Nothing guarded (the guard off, or no rough boxes to fall back to)."""
        return cls(np.zeros(n, dtype=bool), np.zeros((n, 4), dtype=bool))

    def __len__(self) -> int:
        return len(self.collapsed)

    def __getitem__(self, sel: Any) -> "Guard":
        return Guard(self.collapsed[sel], self.edges[sel])

    @classmethod
    def concat(cls, parts: "list[Guard]") -> "Guard":
        if not parts:
            return cls.none(0)
        return cls(np.concatenate([p.collapsed for p in parts]), np.concatenate([p.edges for p in parts]))

    def reason(self, i: int) -> str | None:
        """``"collapsed"``, ``"moved"`` or None for box ``i``."""
        if self.collapsed[i]:
            return COLLAPSED
        return MOVED if self.edges[i].any() else None

    def edge_names(self, i: int) -> list[str]:
        return [e for e, g in zip(EDGE_NAMES, self.edges[i]) if g]

    def describe(self, i: int) -> dict[str, Any] | None:
        """Box ``i``'s verdict as JSON: None, or ``{"reason": "collapsed"|"moved", "edges": [...]}``."""
        reason = self.reason(i)
        return None if reason is None else {"reason": reason, "edges": self.edge_names(i)}

    def label(self, i: int) -> str:
        """Box ``i``'s verdict as one string for table columns: ``""``, ``"collapsed"`` or
        ``"moved:left,bottom"``."""
        reason = self.reason(i)
        if reason is None:
            return ""
        return reason if reason == COLLAPSED else f"{reason}:{','.join(self.edge_names(i))}"


def guard_boxes(snapped_xyxy: np.ndarray, rough_xyxy: np.ndarray, max_edge_move: float) -> tuple[np.ndarray, Guard]:
    """Snapped boxes (N, 4) xyxy checked against their rough boxes (N, 4) xyxy, both in
    original pixels (the rough ones clipped to the image): the guarded boxes and the verdict."""
    snapped = np.array(snapped_xyxy, dtype=np.float64).reshape(-1, 4)
    rough = np.asarray(rough_xyxy, dtype=np.float64).reshape(-1, 4)
    if len(rough) != len(snapped):
        raise ValueError(f"{len(rough)} rough boxes for {len(snapped)} snapped ones")
    extent = rough[:, [2, 3]] - rough[:, [0, 1]]  # (N, 2): width, height
    size = snapped[:, [2, 3]] - snapped[:, [0, 1]]
    with np.errstate(invalid="ignore"):
        collapsed = (size < np.maximum(MIN_SIZE_PX, MIN_SIZE_FRAC * extent)).any(axis=1)
        moved = np.abs(snapped - rough) > max_edge_move * extent[:, [0, 1, 0, 1]]
    moved &= ~collapsed[:, None]
    snapped[collapsed] = rough[collapsed]
    snapped[moved] = rough[moved]
    edges = moved | collapsed[:, None]
    return snapped, Guard(collapsed, edges)
