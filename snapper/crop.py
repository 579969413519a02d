"""Crop windows around rough boxes and the exact coordinate maps between three frames.

* original: pixels of the full image (continuous coordinates, see ``geometry``);
* crop:     original pixels relative to the crop window's top-left corner;
* input:    the model input, ``size x size``; each axis is scaled on its own, so the crop is
            stretched to a square. Edges are decoded per axis, so anisotropic scaling costs
            nothing and gives thin objects the full input resolution on their short side.

A window is ``[x0, y0, x1, y1]`` in original pixels and may extend past the image; the part
outside is zero padding (after normalisation: the dataset mean, i.e. "no signal").

:class:`CropGeometry` holds one batch of windows and every map between the frames; the
training and evaluation streams, :class:`snapper.inference.snap.Snapper` and batch snapping all go
through it, so the round trip (window -> decode scale -> targets -> back to original pixels)
exists once. Two kernels cut the pixels: :func:`crop_images` (``roi_align``; any device) and
:func:`cut_crops` (the same numbers as separable gather-sums; several times faster on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import roi_align

from snapper.errors import ConfigError
from snapper.geometry import clip_boxes

MIN_WINDOW = 1.0  # px; a window is never thinner than one original pixel


def crop_windows(rough: np.ndarray, buffer_ratio: "float | np.ndarray" = 1.0, context: float = 1.4) -> np.ndarray:
    """Windows (xyxy, original px) centred on the rough boxes, ``buffer_ratio * context`` times
    their size on each axis (``buffer_ratio``: one number, or one per box)."""
    ratio = np.asarray(buffer_ratio, dtype=np.float64)
    if not (np.isfinite(ratio).all() and (ratio > 0).all()):
        raise ConfigError(f"buffer_ratio must be a positive number, got {buffer_ratio!r}")
    r = np.asarray(rough, dtype=np.float64).reshape(-1, 4)
    cx = (r[:, 0] + r[:, 2]) / 2
    cy = (r[:, 1] + r[:, 3]) / 2
    s = buffer_ratio * context
    hw = np.maximum((r[:, 2] - r[:, 0]) * s, MIN_WINDOW) / 2
    hh = np.maximum((r[:, 3] - r[:, 1]) * s, MIN_WINDOW) / 2
    return np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1)


def _scale(windows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    return size / (w[:, 2] - w[:, 0]), size / (w[:, 3] - w[:, 1])


def original_to_crop(boxes: np.ndarray, windows: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    return b - w[:, [0, 1, 0, 1]]


def crop_to_original(boxes: np.ndarray, windows: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    return b + w[:, [0, 1, 0, 1]]


def crop_to_input(boxes: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
    sx, sy = _scale(windows, size)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return b * np.stack([sx, sy, sx, sy], axis=1)


def input_to_crop(boxes: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
    sx, sy = _scale(windows, size)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return b / np.stack([sx, sy, sx, sy], axis=1)


def original_to_input(boxes: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
    return crop_to_input(original_to_crop(boxes, windows), windows, size)


def input_to_original(boxes: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
    return crop_to_original(input_to_crop(boxes, windows, size), windows)


def edge_targets(true_boxes: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
    """Where each true edge lies in model-input coordinates, clipped to the crop ``[0, size]``
    (an edge outside the crop is learned as "at the border")."""
    return original_to_input(true_boxes, windows, size).clip(0.0, float(size))


def _out_hw(size: "int | tuple[int, int]") -> tuple[int, int]:
    """``size`` (square side) or ``(height, width)`` as (height, width)."""
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def crop_images(
    image: torch.Tensor,
    windows: np.ndarray,
    size: "int | tuple[int, int]",
    image_scale: tuple[float, float] = (1.0, 1.0),
) -> torch.Tensor:
    """Resample each window of one image to ``size x size`` (or ``(height, width)``) with area
    averaging.

    ``image`` is ``(C, H, W)`` (any dtype; computed in float32 on its device). ``image_scale``
    is (decoded width / original width, decoded height / original height) for images decoded
    at reduced scale (JPEG draft mode); windows stay in original pixels. ``roi_align`` with an
    adaptive sampling ratio averages every source pixel a bin covers, so downscaling does not
    alias, and pixels outside the image read as zero.
    """
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image tensor, got shape {tuple(image.shape)}")
    w = torch.as_tensor(np.asarray(windows, dtype=np.float64).reshape(-1, 4), dtype=torch.float32)
    w = w * torch.tensor([image_scale[0], image_scale[1], image_scale[0], image_scale[1]])
    oh, ow = _out_hw(size)
    if len(w) == 0:
        return image.new_zeros((0, image.shape[0], oh, ow), dtype=torch.float32)
    img = image.to(torch.float32).unsqueeze(0)
    rois = torch.cat([torch.zeros(len(w), 1), w], dim=1).to(img.device)
    return roi_align(img, rois, output_size=(oh, ow), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def tidy_boxes(xyxy: np.ndarray, width: "float | np.ndarray", height: "float | np.ndarray") -> np.ndarray:
    """Clip predictions to the image and keep every box at least 1 px wide and tall (crossed
    edges on a hopeless crop collapse onto their midpoint). ``width``/``height`` are scalars
    or one value per box."""
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    n = len(b)
    wd = np.broadcast_to(np.asarray(width, dtype=np.float64), (n,))
    ht = np.broadcast_to(np.asarray(height, dtype=np.float64), (n,))
    b = clip_boxes(b, wd[:, None], ht[:, None]) if n else b.copy()
    for lo, hi, limit in ((0, 2, wd), (1, 3, ht)):
        mid = (b[:, lo] + b[:, hi]) / 2
        thin = b[:, hi] - b[:, lo] < 1.0
        b[thin, lo] = np.clip(mid[thin] - 0.5, 0, np.maximum(limit[thin] - 1.0, 0))
        b[thin, hi] = b[thin, lo] + np.minimum(1.0, limit[thin])
    return b


def decode_scale(windows: np.ndarray, size: int) -> float:
    """The smallest decoded/original ratio that still gives every crop full input resolution:
    the largest input/window ratio over the image's crops, capped at 1."""
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    if len(w) == 0:
        return 1.0
    ratio = np.maximum(size / (w[:, 2] - w[:, 0]), size / (w[:, 3] - w[:, 1]))
    return float(min(1.0, ratio.max()))


@dataclass(frozen=True)
class CropGeometry:
    """The crops of one batch of rough boxes: where each window lies in the original image and
    how a model-input position maps back. ``windows`` (N, 4) xyxy original px; ``size`` the
    model input side. Slicing (``geo[i:j]``) keeps the size."""

    windows: np.ndarray
    size: int

    @classmethod
    def around(cls, rough_xyxy: np.ndarray, size: int, context: float,
               buffer_ratio: "float | np.ndarray" = 1.0) -> "CropGeometry":
        """Windows centred on the rough boxes, ``buffer_ratio * context`` times their size."""
        return cls(crop_windows(rough_xyxy, buffer_ratio, context), int(size))

    def __post_init__(self) -> None:
        object.__setattr__(self, "windows", np.asarray(self.windows, dtype=np.float64).reshape(-1, 4))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: "slice | np.ndarray | list[int]") -> "CropGeometry":
        return CropGeometry(self.windows[index], self.size)

    @staticmethod
    def concat(parts: "list[CropGeometry]") -> "CropGeometry":
        if not parts:
            raise ValueError("CropGeometry.concat needs at least one part")
        return CropGeometry(np.concatenate([p.windows for p in parts]), parts[0].size)

    @property
    def edge_scale(self) -> np.ndarray:
        """(N, 4) original pixels per input pixel across each edge (left, top, right, bottom)."""
        w = self.windows
        sx, sy = (w[:, 2] - w[:, 0]) / self.size, (w[:, 3] - w[:, 1]) / self.size
        return np.stack([sx, sy, sx, sy], axis=1)

    def decode_scale(self) -> float:
        """How far an image may be decoded below full scale (JPEG draft) for these crops."""
        return decode_scale(self.windows, self.size)

    def to_input(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        return original_to_input(boxes_xyxy, self.windows, self.size)

    def targets(self, true_xyxy: np.ndarray) -> np.ndarray:
        """True edges in input px, clipped to the crop (see :func:`edge_targets`)."""
        return edge_targets(true_xyxy, self.windows, self.size)

    def to_original(self, pos_input: np.ndarray, width: "float | np.ndarray | None" = None,
                    height: "float | np.ndarray | None" = None) -> np.ndarray:
        """Input-px edge positions -> original-image xyxy; with the image size (scalar or per
        box) also tidied: clipped to the image, at least 1 px wide and tall."""
        boxes = input_to_original(pos_input, self.windows, self.size)
        if width is None or height is None:
            return boxes
        return tidy_boxes(boxes, width, height)

    def cut(self, image: torch.Tensor, image_scale: tuple[float, float] = (1.0, 1.0),
            mirror: "np.ndarray | torch.Tensor | None" = None) -> torch.Tensor:
        """Float crops (N, C, S, S): the CPU kernel for CPU images, ``roi_align`` elsewhere."""
        if image.device.type == "cpu":
            return cut_crops(image, self.windows, self.size, image_scale, mirror)
        crops = crop_images(image, self.windows, self.size, image_scale)
        if mirror is not None:
            m = torch.as_tensor(np.asarray(mirror, dtype=bool).reshape(-1), device=crops.device)
            crops = torch.where(m.view(-1, 1, 1, 1), crops.flip(-1), crops)
        return crops


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pixels (rounded, clamped) as uint8, in place where possible."""
    return x.round_().clamp_(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------- the fast CPU kernel


@dataclass
class _AxisTaps:
    """One axis of one crop: output pixel i reads span pixels ``index[i, :]`` (relative to
    ``lo``) with ``weight[i, :]``; ``span`` pixels from ``lo`` on are all the crop touches."""

    lo: int
    span: int
    index: torch.Tensor  # (size, taps) int64
    weight: torch.Tensor  # (size, taps) float32


def _axis_taps(a: np.ndarray, b: np.ndarray, size: int, length: np.ndarray,
               reverse: np.ndarray | None = None) -> list[_AxisTaps | None]:
    """One axis of ``roi_align(aligned=True, sampling_ratio=-1)`` per problem, for the window
    [a_i, b_i) over an axis of ``length_i`` pixels; None when the window misses the axis.
    Mirrors torchvision's kernel: ceil(width / size) bilinear samples per bin, samples beyond
    [-1, length] read zero, samples in [-1, 0] clamp to pixel 0. Vectorised over problems
    (all crops, both axes) because the per-call overhead, not the arithmetic, is what costs
    here. ``reverse`` flags problems whose output comes in reverse order: a mirrored crop at no
    extra cost."""
    a, b, length = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (a, b, length))
    width = b - a
    binsz = width / size
    g = np.maximum(1.0, np.ceil(width / size))
    k = np.arange(int(g.max()), dtype=np.float64)[None, None, :]
    ln = length[:, None, None]
    y = ((a - 0.5)[:, None, None] + np.arange(size, dtype=np.float64)[None, :, None] * binsz[:, None, None]
         + (k + 0.5) * (binsz / g)[:, None, None])
    valid = (y >= -1.0) & (y <= ln) & (k < g[:, None, None])
    y = np.maximum(y, 0.0)
    low = np.floor(y)
    edge = low >= ln - 1
    low = np.where(edge, ln - 1, low)
    frac = np.where(edge, 0.0, y - low)
    idx = np.concatenate([low, np.where(edge, low, low + 1)], axis=2).astype(np.int64)  # (m, S, 2G)
    w = np.concatenate([np.where(valid, 1.0 - frac, 0.0), np.where(valid, frac, 0.0)], axis=2) / g[:, None, None]
    pos = w > 0
    hit = pos.any(axis=(1, 2))
    big = np.iinfo(np.int64).max
    lo = np.where(hit, np.where(pos, idx, big).min(axis=(1, 2)), 0)
    hi = np.where(hit, np.where(pos, idx, -1).max(axis=(1, 2)) + 1, 1)
    idx = np.clip(idx, lo[:, None, None], (hi - 1)[:, None, None]) - lo[:, None, None]
    if reverse is not None and reverse.any():
        idx[reverse], w[reverse] = idx[reverse, ::-1], w[reverse, ::-1]
    gmax = int(g.max())  # taps are [low samples | high samples], gmax each; problem i uses g_i of each
    out: list[_AxisTaps | None] = []
    for i in range(len(a)):
        if not hit[i]:
            out.append(None)
            continue
        gi = int(g[i])
        t = np.r_[0:gi, gmax : gmax + gi]
        out.append(_AxisTaps(int(lo[i]), int(hi[i] - lo[i]), torch.from_numpy(np.ascontiguousarray(idx[i][:, t])),
                             torch.from_numpy(w[i][:, t].astype(np.float32))))
    return out


def _resample(taps: _AxisTaps, rows: torch.Tensor) -> torch.Tensor:
    """(size, cols) = taps applied to the (span, cols) rows: a weighted gather-sum, which
    ``embedding_bag`` does in one call, ~3x faster than building and applying a sparse matrix."""
    return torch.nn.functional.embedding_bag(taps.index, rows, per_sample_weights=taps.weight, mode="sum")


def cut_crops(
    image: torch.Tensor,
    windows: np.ndarray,
    size: "int | tuple[int, int]",
    image_scale: tuple[float, float] = (1.0, 1.0),
    mirror: "np.ndarray | torch.Tensor | None" = None,
) -> torch.Tensor:
    """``crop.crop_images`` (same numbers, to float rounding) computed as two separable
    gather-sums over just the pixels each window covers: roi_align's sampling is separable,
    and on CPU this avoids converting the whole image to float and roi_align's scalar inner
    loop (several times faster per crop, which is most of the stream's cost after the
    decode). ``mirror`` (n,) bool flips those crops left-right inside the resampling, for free."""
    c, h, w = image.shape
    win = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    n = len(win)
    oh, ow = _out_hw(size)
    out = torch.zeros((n, c, oh, ow), dtype=torch.float32)
    if n == 0:
        return out
    sx, sy = image_scale
    if oh == ow:  # both axes in one vectorised call
        reverse = None
        if mirror is not None:
            reverse = np.concatenate([np.zeros(n, dtype=bool), np.asarray(mirror, dtype=bool).reshape(n)])
        taps = _axis_taps(np.concatenate([win[:, 1] * sy, win[:, 0] * sx]),
                          np.concatenate([win[:, 3] * sy, win[:, 2] * sx]), oh,
                          np.concatenate([np.full(n, h), np.full(n, w)]), reverse)
    else:
        reverse = None if mirror is None else np.asarray(mirror, dtype=bool).reshape(n)
        taps = (_axis_taps(win[:, 1] * sy, win[:, 3] * sy, oh, np.full(n, h))
                + _axis_taps(win[:, 0] * sx, win[:, 2] * sx, ow, np.full(n, w), reverse))
    hwc = image.permute(1, 2, 0)  # decoded images are HWC in memory: rows of w * C values
    for i in range(n):
        ty, tx = taps[i], taps[n + i]
        if ty is None or tx is None:
            continue  # the window misses the image: all padding
        rows = hwc[ty.lo : ty.lo + ty.span, tx.lo : tx.lo + tx.span].to(torch.float32).reshape(ty.span, -1)
        tmp = _resample(ty, rows)  # (S_y, span_x * C): rows resampled
        tmp = tmp.reshape(oh, tx.span, c).transpose(0, 1).reshape(tx.span, oh * c)
        out[i] = _resample(tx, tmp).reshape(ow, oh, c).permute(2, 1, 0)  # (S_x, S_y * C)
    return out
