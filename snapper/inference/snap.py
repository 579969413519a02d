"""The snap API: rough boxes in, tight boxes and per-edge confidence out.

    snapper = Snapper.from_checkpoint("runs/demo/best")
    result = snapper.snap("photo.jpg", [[x, y, w, h], ...], buffer_ratio=1.0)
    result.boxes        # (N, 4) COCO xywh in original pixels
    result.confidence   # (N, 4) left, top, right, bottom in [0, 1] (calibrated if the model is: Snapper.calibrated)
    result.guard        # which boxes/edges the broken-box guard gave back rough (snapper.inference.guard)

All boxes of an image are cropped from one decode and run as one batch.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from snapper.config import ModelConfig, SnapSettings
from snapper.crop import CropGeometry, tidy_boxes, to_uint8
from snapper.device import autocast, autocast_dtype, resolve_device, use_channels_last
from snapper.errors import BadBoxError
from snapper.geometry import EDGE_NAMES, box_problem, clip_boxes, xywh_to_xyxy, xyxy_to_xywh
from snapper.imageio import LoadedImage, load_image
from snapper.inference.guard import Guard, guard_boxes
from snapper.models.checkpoint import load_checkpoint
from snapper.models.edges import calibrate_confidence
from snapper.zoom import StripGeometry, check_passes, zoom_edges

# A zoom-pass position this close (input px) to a strip's border means the edge lies outside
# the band (the first pass was off by more than half a strip): the first pass is kept.
STRIP_BORDER = 1.0


def _mirror_lr(logits: torch.Tensor) -> torch.Tensor:
    """Edge logits (B, 4, bins) of horizontally mirrored crops, as the unmirrored crops' edges:
    the mirror's right edge is the left one, and bins sit on pixel boundaries, so position
    u -> S - u is bin k -> bins - 1 - k."""
    out = logits[:, [2, 1, 0, 3]].clone()
    out[:, [0, 2]] = out[:, [0, 2]].flip(-1)
    return out


def _mean_distribution(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logits of the mean of two softmax distributions (what the decoder reads)."""
    return torch.logsumexp(torch.stack([a.float().log_softmax(-1), b.float().log_softmax(-1)]), 0) - math.log(2)


def rough_area(rough_xyxy: np.ndarray) -> np.ndarray:
    """(B,) areas (original px^2) of (B, 4) xyxy rough boxes: what picks a per-size calibration's
    map (the fit buckets its edges by the same boxes' areas, :mod:`snapper.evaluation.calibrate`)."""
    r = np.asarray(rough_xyxy, dtype=np.float64).reshape(-1, 4)
    return (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])


@dataclass
class ReadOut:
    """What :meth:`Snapper.read_out` gives: boxes (B, 4) xyxy in original pixels, confidence
    (B, 4) and the broken-box guard's verdict (nothing guarded when no rough boxes were given or
    ``SnapSettings.guard`` is off)."""

    boxes: np.ndarray
    confidence: np.ndarray
    guard: Guard


@dataclass
class SnapResult:
    boxes: np.ndarray  # (N, 4) COCO xywh, original pixels
    confidence: np.ndarray  # (N, 4) per edge (left, top, right, bottom); NaN for the regression baseline
    rough: np.ndarray  # (N, 4) the input boxes, COCO xywh
    guard: Guard | None = None  # boxes/edges given back rough by the broken-box guard; None: nothing guarded

    def __post_init__(self) -> None:
        if self.guard is None:
            self.guard = Guard.none(len(self.boxes))

    def to_json(self) -> list[dict]:
        guard = self.guard if self.guard is not None else Guard.none(len(self.boxes))
        return [
            {
                "rough": [round(float(v), 3) for v in r],
                "bbox": [round(float(v), 3) for v in b],
                "confidence": {n: (None if np.isnan(c) else round(float(c), 4)) for n, c in zip(EDGE_NAMES, conf)},
                "guard": guard.describe(i),
            }
            for i, (r, b, conf) in enumerate(zip(self.rough, self.boxes, self.confidence))
        ]


class Snapper:
    """A model ready to snap, read out as its :class:`snapper.config.SnapSettings` say (device,
    precision, crops per forward, buffer ratio, passes, flip, memory format). ``flip`` also
    reads every crop (and strip) mirrored and averages the two edge distributions: test-time
    augmentation at twice the model time. ``channels_last=False`` keeps the plain NCHW memory
    format where :func:`snapper.device.use_channels_last` would pick NHWC (same results; for a
    CPU whose kernels are slower in NHWC than the ones it was measured on).

    Keyword arguments are changes to ``settings`` (``Snapper.from_checkpoint(path,
    device="cpu")``); ``name`` is how errors about this model name it."""

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, settings: SnapSettings | None = None, *,
                 name: str = "this model", **changes: Any):
        self.settings = dataclasses.replace(settings or SnapSettings(), **changes)
        self.name = name
        check_passes(cfg, self.settings.passes, name)
        self.device = resolve_device(self.settings.device)
        self.autocast_dtype = autocast_dtype(self.device, self.settings.precision)
        self.channels_last = self.settings.channels_last and use_channels_last(self.device)
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.cfg = cfg

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], settings: SnapSettings | None = None,
                        **changes: Any) -> "Snapper":
        model, cfg, _ = load_checkpoint(path)
        return cls(model, cfg, settings, name=str(path), **changes)

    @property
    def flip(self) -> bool:
        return self.settings.flip

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    def with_settings(self, **changes: Any) -> "Snapper":
        """This snapper read out otherwise (``SnapSettings.READ_OUT``: buffer ratio, passes,
        flip, crops per forward): a shallow copy sharing the loaded model, so that one model can
        answer requests with different settings side by side. Device, precision and memory
        format move the model: those need a new :class:`Snapper`."""
        moved = sorted(set(changes) - set(SnapSettings.READ_OUT))
        if moved:
            raise ValueError(f"with_settings changes {', '.join(SnapSettings.READ_OUT)} only, not {', '.join(moved)}")
        settings = dataclasses.replace(self.settings, **changes)
        if settings == self.settings:
            return self
        check_passes(self.cfg, settings.passes, self.name)
        other = copy.copy(self)
        other.settings = settings
        return other

    def calibrated(self, conf: np.ndarray, area: np.ndarray | None = None) -> np.ndarray:
        """The model's raw per-edge probabilities through its calibration (``model.calibration``,
        ``snapper calibrate``), if it has one; ``area``: each row's rough-box area in original
        pixels, which picks the map of a per-size calibration (None: its map for every box). Both
        passes' confidences go through here and nowhere else, so that every caller (snap, batch
        jobs, evaluation, the servers) reads the same numbers and a confidence is never mapped twice."""
        return calibrate_confidence(conf, self.cfg.calibration, area)

    @torch.inference_mode()
    def predict_crops(self, crops: torch.Tensor, geometry: CropGeometry | None = None,
                      area: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, S, S) crops -> edge positions in input pixels (B, 4) and confidence (B, 4).

        ``geometry``: the crops' windows, so that confidence is the probability of being within
        ``confidence_px`` *original* pixels; without it the crops are taken to be at original
        scale. Calibrated (:meth:`calibrated`, with ``area`` (B,): the rough boxes' areas) when the
        model carries a calibration."""
        scale = None
        if geometry is not None:
            if len(geometry) != len(crops):
                raise ValueError(f"{len(geometry)} windows for {len(crops)} crops")
            scale = torch.from_numpy(geometry.edge_scale).float()
        pos, conf = [], []
        for i in range(0, len(crops), self.batch_size):
            x = crops[i : i + self.batch_size].to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.autocast_dtype):
                out = self.model(x)
                if self.flip and self.cfg.head == "edges":  # mirrored: left <-> right, positions u -> S - u
                    out = _mean_distribution(out, _mirror_lr(self.model(x.flip(-1))))
            p, c = self.model.decode(out.float(), None if scale is None else scale[i : i + self.batch_size])
            pos.append(p.double().cpu())
            conf.append(c.double().cpu())
        if not pos:
            return np.zeros((0, 4)), np.zeros((0, 4))
        return torch.cat(pos).numpy(), self.calibrated(torch.cat(conf).numpy(), area)

    @torch.inference_mode()
    def predict_strips(self, strips: torch.Tensor, geometry: StripGeometry,
                       area: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Canonical strips (K, 3, L, S) -> edge positions across (K,) in input px, confidence (K,)
        (calibrated with ``area`` (K,), each strip's rough-box area, as :meth:`predict_crops`)."""
        scale = torch.from_numpy(geometry.scale).float()
        step = self.batch_size * max(1, self.cfg.input_size // max(1, self.cfg.zoom_length))  # same pixels per call
        pos, conf = [], []
        for i in range(0, len(strips), step):
            x = strips[i : i + step].to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.autocast_dtype):
                out = self.model.forward_strips(x)
                if self.flip:  # mirrored along the edge: the position across is unchanged
                    out = _mean_distribution(out, self.model.forward_strips(x.flip(-2)))
            p, c = self.model.decode_strips(out.float(), scale[i : i + step])
            pos.append(p.double().cpu())
            conf.append(c.double().cpu())
        if not pos:
            return np.zeros(0), np.zeros(0)
        return torch.cat(pos).numpy(), self.calibrated(torch.cat(conf).numpy(), area)

    def second_pass(self, boxes_xyxy: np.ndarray, confidence: np.ndarray, first: CropGeometry,
                    sources: "list[tuple[torch.Tensor, tuple[float, float]]]", owner: np.ndarray,
                    width: "float | np.ndarray", height: "float | np.ndarray",
                    area: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The zoom-in pass over first-pass results ``boxes_xyxy`` (N, 4) (original px) and their
        ``confidence``: every edge coarser than the model's zoom threshold is decoded again from
        a strip. ``sources[owner[i]]`` is box i's image tensor and its decoded/original scale
        (decoded at >= 1 / zoom_scale for the strips to gain anything); ``area`` (N,): the rough
        boxes' areas, for a per-size calibration (:meth:`calibrated`)."""
        boxes = np.array(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        conf = np.array(confidence, dtype=np.float64).reshape(-1, 4)
        bi, ei = np.nonzero(zoom_edges(first, self.cfg))
        if len(bi) == 0:
            return boxes, conf
        geo = StripGeometry.around(boxes[bi], ei, self.cfg)
        owners = np.asarray(owner).reshape(-1)[bi]
        strips = torch.empty((len(bi), 3, geo.length, geo.across), dtype=torch.uint8)
        for src in np.unique(owners):
            sel = np.flatnonzero(owners == src)
            image, scale = sources[int(src)]
            strips[torch.from_numpy(sel)] = to_uint8(geo[sel].cut(image, scale)).cpu()
        u, c = self.predict_strips(strips, geo, None if area is None else np.asarray(area, dtype=np.float64)[bi])
        inside = (u > STRIP_BORDER) & (u < geo.across - STRIP_BORDER)
        boxes[bi[inside], ei[inside]] = geo.to_original(u)[inside]
        conf[bi[inside], ei[inside]] = c[inside]
        return tidy_boxes(boxes, width, height), conf

    def read_out(self, crops: torch.Tensor, geometry: CropGeometry, width: "float | np.ndarray",
                 height: "float | np.ndarray", sources: "list[tuple[torch.Tensor, tuple[float, float]]] | None" = None,
                 owner: np.ndarray | None = None, rough: np.ndarray | None = None) -> ReadOut:
        """Crops (B, 3, S, S) cut at ``geometry`` -> boxes (B, 4) xyxy in original pixels, tidied
        to their image (``width``/``height``: one number, or one per crop), and confidence (B, 4);
        with ``passes=2`` the zoom-in pass follows, cutting strips from ``sources[owner[i]]`` (crop
        i's decoded image and its scale; ``owner`` defaults to one image). Then, given ``rough``
        (B, 4) xyxy, the crops' rough boxes clipped to their image, the broken-box guard
        (:mod:`snapper.inference.guard`, ``SnapSettings.guard``). The one read-out: snapping,
        batch jobs and evaluation all go through here, so every entry point shares the guard and
        the calibration, which for a per-size one picks each box's map by its ``rough`` box's
        area (without ``rough``: the map for every box)."""
        area = None if rough is None else rough_area(rough)
        pos, conf = self.predict_crops(crops, geometry, area)
        boxes = geometry.to_original(pos, width, height)
        if self.settings.passes == 2:
            if sources is None:
                raise ValueError("passes=2 needs the crops' source images for the zoom-in strips")
            owner = np.zeros(len(boxes), dtype=np.int64) if owner is None else owner
            boxes, conf = self.second_pass(boxes, conf, geometry, sources, owner, width, height, area)
        if rough is None or not self.settings.guard:
            return ReadOut(boxes, conf, Guard.none(len(boxes)))
        boxes, guard = guard_boxes(boxes, rough, self.settings.max_edge_move)
        return ReadOut(boxes, conf, guard)

    def snap(
        self,
        image: "str | os.PathLike[str] | bytes | Image.Image | LoadedImage",
        boxes: "np.ndarray | list[list[float]]",
        buffer_ratio: float | None = None,
        passes: int | None = None,
    ) -> SnapResult:
        """Snap COCO ``[x, y, w, h]`` rough boxes on one image (decoded once). ``buffer_ratio``
        and ``passes`` change this call's settings (a server's per-request values; ``passes=2``
        is the zoom-in pass of models trained with ``model.zoom``)."""
        changes = {k: v for k, v in (("buffer_ratio", buffer_ratio), ("passes", passes)) if v is not None}
        if changes:
            return self.with_settings(**changes).snap(image, boxes)
        rough = np.asarray(boxes, dtype=np.float64)
        if rough.size == 0:
            rough = rough.reshape(0, 4)
        if rough.ndim != 2 or rough.shape[1] != 4:
            raise BadBoxError(f"boxes must be a list of [x, y, w, h], got shape {rough.shape}")
        if not isinstance(image, LoadedImage):
            probe = image if not isinstance(image, (str, os.PathLike)) else str(image)
            image = load_image(probe)  # full decode: a snap may need any scale
        for i, b in enumerate(rough):
            problem = box_problem(b, image.width, image.height)
            if problem is not None:
                raise BadBoxError(f"box {i} {b.tolist()} is unusable ({problem}) for an image of {image.width}x{image.height}")
        # clipped to the image, as batch snapping does: a box reaching far outside would otherwise make a
        # crop window (and the memory to cut it) as large as the box, whatever the image
        rough_xyxy = clip_boxes(xywh_to_xyxy(rough), image.width, image.height)
        geo = CropGeometry.around(rough_xyxy, self.cfg.input_size, self.cfg.context, self.settings.buffer_ratio)
        crops = to_uint8(geo.cut(image.tensor, image.scale))
        out = self.read_out(crops, geo, image.width, image.height, [(image.tensor, image.scale)], rough=rough_xyxy)
        return SnapResult(boxes=xyxy_to_xywh(out.boxes), confidence=out.confidence, rough=rough, guard=out.guard)
