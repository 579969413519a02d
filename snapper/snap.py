"""The snap API: rough boxes in, tight boxes and per-edge confidence out.

    snapper = Snapper.from_checkpoint("runs/demo/best")
    result = snapper.snap("photo.jpg", [[x, y, w, h], ...], buffer_ratio=1.0)
    result.boxes        # (N, 4) COCO xywh in original pixels
    result.confidence   # (N, 4) left, top, right, bottom in [0, 1]

All boxes of an image are cropped from one decode and run as one batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from snapper.checkpoint import load_checkpoint
from snapper.config import ModelConfig
from snapper.crop import CropGeometry, to_uint8
from snapper.device import autocast, autocast_dtype, resolve_device, use_channels_last
from snapper.geometry import EDGE_NAMES, box_problem, xywh_to_xyxy, xyxy_to_xywh
from snapper.imageio import LoadedImage, load_image


@dataclass
class SnapResult:
    boxes: np.ndarray  # (N, 4) COCO xywh, original pixels
    confidence: np.ndarray  # (N, 4) per edge (left, top, right, bottom); NaN for the regression baseline
    rough: np.ndarray  # (N, 4) the input boxes, COCO xywh

    def to_json(self) -> list[dict]:
        return [
            {
                "rough": [round(float(v), 3) for v in r],
                "bbox": [round(float(v), 3) for v in b],
                "confidence": {n: (None if np.isnan(c) else round(float(c), 4)) for n, c in zip(EDGE_NAMES, conf)},
            }
            for r, b, conf in zip(self.rough, self.boxes, self.confidence)
        ]


class Snapper:
    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, device: str | torch.device = "auto",
                 batch_size: int = 64, precision: str = "auto"):
        self.device = resolve_device(device)
        self.autocast_dtype = autocast_dtype(self.device, precision)
        self.channels_last = use_channels_last(self.device)
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.cfg = cfg
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str = "auto", batch_size: int = 64,
                        precision: str = "auto") -> "Snapper":
        model, cfg, _ = load_checkpoint(path)
        return cls(model, cfg, device=device, batch_size=batch_size, precision=precision)

    @torch.inference_mode()
    def predict_crops(self, crops: torch.Tensor, geometry: CropGeometry | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, S, S) crops -> edge positions in input pixels (B, 4) and confidence (B, 4).

        ``geometry``: the crops' windows, so that confidence is the probability of being within
        ``confidence_px`` *original* pixels; without it the crops are taken to be at original
        scale."""
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
            p, c = self.model.decode(out.float(), None if scale is None else scale[i : i + self.batch_size])
            pos.append(p.double().cpu())
            conf.append(c.double().cpu())
        if not pos:
            return np.zeros((0, 4)), np.zeros((0, 4))
        return torch.cat(pos).numpy(), torch.cat(conf).numpy()

    def geometry(self, rough_xyxy: np.ndarray, buffer_ratio: float = 1.0) -> CropGeometry:
        """The crops this model reads for these rough boxes (its own input size and context)."""
        return CropGeometry.around(rough_xyxy, self.cfg.input_size, self.cfg.context, buffer_ratio)

    def snap(
        self,
        image: "str | os.PathLike[str] | bytes | Image.Image | LoadedImage",
        boxes: "np.ndarray | list[list[float]]",
        buffer_ratio: float = 1.0,
    ) -> SnapResult:
        """Snap COCO ``[x, y, w, h]`` rough boxes on one image (decoded once)."""
        rough = np.asarray(boxes, dtype=np.float64)
        if rough.size == 0:
            rough = rough.reshape(0, 4)
        if rough.ndim != 2 or rough.shape[1] != 4:
            raise ValueError(f"boxes must be a list of [x, y, w, h], got shape {rough.shape}")
        if not isinstance(image, LoadedImage):
            probe = image if not isinstance(image, (str, os.PathLike)) else str(image)
            image = load_image(probe)  # full decode: a snap may need any scale
        for i, b in enumerate(rough):
            problem = box_problem(b, image.width, image.height)
            if problem is not None:
                raise ValueError(f"box {i} {b.tolist()} is unusable ({problem}) for an image of {image.width}x{image.height}")
        xyxy = xywh_to_xyxy(rough)
        geo = self.geometry(xyxy, buffer_ratio)
        crops = to_uint8(geo.cut(image.tensor, image.scale))
        pos, conf = self.predict_crops(crops, geo)
        snapped = geo.to_original(pos, image.width, image.height)
        return SnapResult(boxes=xyxy_to_xywh(snapped), confidence=conf, rough=rough)
