"""The zoom-in pass: a second look at each edge of a large box at about one original pixel per
input pixel.

A first-pass crop of a 500 px object puts ~5 original pixels in each input pixel, so its
edges can be no better than a few pixels. The second pass cuts, around each first-pass edge, a
*strip*: the box's whole extent along the edge (times ``context``, like a crop) squeezed into
``zoom_length`` input pixels, and a band across the edge of ``input_size`` input pixels at
``zoom_scale`` original pixels each. Pooling along the edge loses nothing from the squeeze,
and across the edge the decoder now sees original-pixel detail.

Every strip is shown to the model in one canonical orientation: the edge runs top to bottom
and the object lies to its right (left edges as cut; right edges mirrored; top edges
transposed; bottom edges transposed and mirrored), so one extra decoder serves all four edges
(:meth:`snapper.models.net.SnapperNet.forward_strips`). A strip is ``(3, zoom_length,
input_size)``: a quarter of a 128 px crop's pixels at the defaults, so four strips cost about
one first-pass crop and the second pass at most doubles the time per box.

Only edges whose first-pass crop had more than ``zoom_min_scale * zoom_scale`` original
pixels per input pixel are looked at again; the others are already at full resolution.
Training draws strips around the true edges moved by simulated first-pass errors
(``DataConfig.zoom_noise`` first-pass input pixels, as a normal standard deviation), which
is the error a first pass leaves at that crop scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from snapper.config import ModelConfig
from snapper.crop import CropGeometry, crop_images, cut_crops
from snapper.errors import ConfigError

VERTICAL = (0, 2)  # left and right edges: strips are cut as they stand
MIRRORED = (2, 3)  # right and bottom edges: flipped so the object lies right of the edge


def zoom_threshold(cfg: ModelConfig) -> float:
    """First-pass original px per input px above which an edge gets a second look."""
    return cfg.zoom_min_scale * cfg.zoom_scale


def check_passes(cfg: ModelConfig, passes: int, where: str = "this model") -> None:
    """Refuse a pass count the model was not trained for, naming the fix."""
    if passes not in (1, 2):
        raise ConfigError(f"passes must be 1 or 2, got {passes!r}")
    if passes not in cfg.passes:
        raise ConfigError(f"{where} supports passes=1 only: it was trained without the zoom-in decoder "
                         "(model.zoom=false); use passes=1, or train with --set model.zoom=true")


def zoom_edges(first: CropGeometry, cfg: ModelConfig) -> np.ndarray:
    """(N, 4) bool: which first-pass edges are coarse enough to zoom in on."""
    return first.edge_scale > zoom_threshold(cfg)


@dataclass(frozen=True)
class StripGeometry:
    """Strips around one edge each: ``windows`` (K, 4) xyxy original px, ``edges`` (K,) in
    0..3 (left, top, right, bottom), ``across`` input px across the edge, ``length`` input px
    along it. Canonical frame: input column u in [0, across] is the position across the edge,
    counted from the outside of the object inwards."""

    windows: np.ndarray
    edges: np.ndarray
    across: int
    length: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "windows", np.asarray(self.windows, dtype=np.float64).reshape(-1, 4))
        object.__setattr__(self, "edges", np.asarray(self.edges, dtype=np.int64).reshape(-1))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: "slice | np.ndarray | list[int]") -> "StripGeometry":
        return StripGeometry(self.windows[index], self.edges[index], self.across, self.length)

    @classmethod
    def around(cls, boxes_xyxy: np.ndarray, edges: np.ndarray, cfg: ModelConfig) -> "StripGeometry":
        """One strip per (box, edge): centred on that edge of the box, ``input_size *
        zoom_scale`` original px across, the box's extent times ``context`` along."""
        b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        e = np.asarray(edges, dtype=np.int64).reshape(-1)
        half = cfg.input_size * cfg.zoom_scale / 2
        pos = b[np.arange(len(b)), e]
        vertical = np.isin(e, VERTICAL)
        lo = np.where(vertical, b[:, 1], b[:, 0])  # the box along the edge
        hi = np.where(vertical, b[:, 3], b[:, 2])
        mid, reach = (lo + hi) / 2, np.maximum(hi - lo, 1.0) * cfg.context / 2
        w = np.where(vertical[:, None], np.stack([pos - half, mid - reach, pos + half, mid + reach], 1),
                     np.stack([mid - reach, pos - half, mid + reach, pos + half], 1))
        return cls(w, e, cfg.input_size, cfg.zoom_length)

    @property
    def scale(self) -> np.ndarray:
        """(K,) original px per input px across each strip's edge."""
        vertical = np.isin(self.edges, VERTICAL)
        w = self.windows
        return np.where(vertical, w[:, 2] - w[:, 0], w[:, 3] - w[:, 1]) / self.across

    def _origin_sign(self) -> tuple[np.ndarray, np.ndarray]:
        """Where u = 0 lies (original px on the edge's axis) and which way u grows."""
        w, e = self.windows, self.edges
        origin = np.choose(e, [w[:, 0], w[:, 1], w[:, 2], w[:, 3]])
        return origin, np.where(np.isin(e, MIRRORED), -1.0, 1.0)

    def targets(self, true_xyxy: np.ndarray) -> np.ndarray:
        """(K,) each strip's true edge in input px across, clipped to the strip."""
        t = np.asarray(true_xyxy, dtype=np.float64).reshape(-1, 4)[np.arange(len(self)), self.edges]
        origin, sign = self._origin_sign()
        return ((t - origin) * sign / self.scale).clip(0.0, float(self.across))

    def to_original(self, u: np.ndarray) -> np.ndarray:
        """(K,) input-px positions across -> original coordinates of the edges."""
        origin, sign = self._origin_sign()
        return origin + sign * np.asarray(u, dtype=np.float64).reshape(-1) * self.scale

    def cut(self, image: torch.Tensor, image_scale: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
        """(K, C, length, across) float strips in the canonical orientation."""
        out = torch.zeros((len(self), image.shape[0], self.length, self.across), dtype=torch.float32,
                          device=image.device)
        vertical = np.isin(self.edges, VERTICAL)
        mirrored = np.isin(self.edges, MIRRORED)
        for upright in (True, False):
            sel = vertical if upright else ~vertical
            hw = (self.length, self.across) if upright else (self.across, self.length)
            if not sel.any():
                continue
            if image.device.type == "cpu":
                strips = cut_crops(image, self.windows[sel], hw, image_scale)
            else:
                strips = crop_images(image, self.windows[sel], hw, image_scale)
            if not upright:
                strips = strips.transpose(-1, -2)
            flip = torch.as_tensor(mirrored[sel], device=strips.device).view(-1, 1, 1, 1)
            out[torch.as_tensor(np.flatnonzero(sel), device=out.device)] = torch.where(flip, strips.flip(-1), strips)
        return out


def simulate_first_pass(true_xyxy: np.ndarray, first: CropGeometry, noise: float,
                        rng: np.random.Generator) -> np.ndarray:
    """True boxes moved as a first pass would leave them: every edge by a normal error of
    ``noise`` first-pass input px (so larger crops err more, in original px), kept >= 1 px."""
    t = np.asarray(true_xyxy, dtype=np.float64).reshape(-1, 4)
    pred = t + rng.normal(0.0, 1.0, t.shape) * noise * first.edge_scale
    for lo, hi in ((0, 2), (1, 3)):
        mid = (pred[:, lo] + pred[:, hi]) / 2
        thin = pred[:, hi] - pred[:, lo] < 1.0
        pred[thin, lo], pred[thin, hi] = mid[thin] - 0.5, mid[thin] + 0.5
    return pred


def training_strips(true_xyxy: np.ndarray, first: CropGeometry, cfg: ModelConfig, noise: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, StripGeometry]:
    """For every box with a coarse edge, one strip around one of its coarse edges (drawn at
    random) of a simulated first pass: (indices of those boxes, their strips). Draws from
    ``rng`` only when some box qualifies."""
    eligible = zoom_edges(first, cfg)
    boxes = np.flatnonzero(eligible.any(axis=1))
    if len(boxes) == 0:
        return boxes, StripGeometry(np.zeros((0, 4)), np.zeros(0), cfg.input_size, cfg.zoom_length)
    pred = simulate_first_pass(true_xyxy[boxes], first[boxes], noise, rng)
    pick = rng.random((len(boxes), 4)) * eligible[boxes]  # a random eligible edge: the largest draw
    return boxes, StripGeometry.around(pred, pick.argmax(axis=1), cfg)
