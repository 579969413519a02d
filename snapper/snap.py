"""The snap API: rough boxes in, tight boxes and per-edge confidence out.

    snapper = Snapper.from_checkpoint("runs/demo/best")
    result = snapper.snap("photo.jpg", [[x, y, w, h], ...], buffer_ratio=1.0)
    result.boxes        # (N, 4) COCO xywh in original pixels
    result.confidence   # (N, 4) left, top, right, bottom in [0, 1]

All boxes of an image are cropped from one decode and run as one batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from snapper.checkpoint import load_checkpoint
from snapper.config import ModelConfig
from snapper.crop import crop_images, crop_windows, input_to_original
from snapper.geometry import EDGE_NAMES, box_problem, clip_boxes, xywh_to_xyxy, xyxy_to_xywh
from snapper.imageio import LoadedImage, load_image


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def tidy_boxes(xyxy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip predictions to the image and keep every box at least 1 px wide and tall
    (crossed edges on a hopeless crop collapse onto their midpoint)."""
    b = clip_boxes(xyxy, width, height)
    for lo, hi, limit in ((0, 2, width), (1, 3, height)):
        mid = (b[:, lo] + b[:, hi]) / 2
        thin = b[:, hi] - b[:, lo] < 1.0
        b[thin, lo] = np.clip(mid[thin] - 0.5, 0, max(limit - 1.0, 0))
        b[thin, hi] = b[thin, lo] + min(1.0, limit)
    return b


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def inference_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = plain fp32). ``auto``: bf16
    on GPUs that have it, else fp16, on CUDA; fp32 on CPU, where bf16 is rarely faster."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Snapper:
    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, device: str | torch.device = "auto",
                 batch_size: int = 64, precision: str = "auto"):
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.autocast_dtype = inference_dtype(self.device, precision)
        self.model = model.to(self.device).eval()
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)  # what cuDNN's fast convs want
        self.cfg = cfg
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str = "auto", batch_size: int = 64,
                        precision: str = "auto") -> "Snapper":
        model, cfg, _ = load_checkpoint(path)
        return cls(model, cfg, device=device, batch_size=batch_size, precision=precision)

    @torch.inference_mode()
    def predict_crops(self, crops: torch.Tensor, windows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, S, S) crops -> edge positions in input pixels (B, 4) and confidence (B, 4).

        ``windows`` (B, 4): the crops' windows in original pixels, so that confidence is the
        probability of being within ``confidence_px`` *original* pixels; without them the
        crops are taken to be at original scale."""
        scale = None
        if windows is not None:
            w = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
            if len(w) != len(crops):
                raise ValueError(f"{len(w)} windows for {len(crops)} crops")
            sx, sy = (w[:, 2] - w[:, 0]) / self.cfg.input_size, (w[:, 3] - w[:, 1]) / self.cfg.input_size
            scale = torch.from_numpy(np.stack([sx, sy, sx, sy], axis=1)).float()
        pos, conf = [], []
        amp = torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                             enabled=self.autocast_dtype is not None)
        for i in range(0, len(crops), self.batch_size):
            x = crops[i : i + self.batch_size].to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with amp:
                out = self.model(x)
            p, c = self.model.decode(out.float(), None if scale is None else scale[i : i + self.batch_size])
            pos.append(p.double().cpu())
            conf.append(c.double().cpu())
        if not pos:
            return np.zeros((0, 4)), np.zeros((0, 4))
        return torch.cat(pos).numpy(), torch.cat(conf).numpy()

    def windows(self, rough_xyxy: np.ndarray, buffer_ratio: float = 1.0) -> np.ndarray:
        return crop_windows(rough_xyxy, buffer_ratio, self.cfg.context)

    def to_original(self, pos_input: np.ndarray, windows: np.ndarray, width: float, height: float) -> np.ndarray:
        return tidy_boxes(input_to_original(pos_input, windows, self.cfg.input_size), width, height)

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
        win = self.windows(xyxy, buffer_ratio)
        crops = crop_images(image.tensor, win, self.cfg.input_size, image.scale)
        pos, conf = self.predict_crops(crops.round().to(torch.uint8), win)
        snapped = self.to_original(pos, win, image.width, image.height)
        return SnapResult(boxes=xyxy_to_xywh(snapped), confidence=conf, rough=rough)


# ----------------------------------------------------------------------------------- the CLI


def draw_overlay(image_path: str, result: SnapResult, out: str) -> None:
    from PIL import ImageDraw

    img = load_image(image_path)
    im = Image.fromarray(img.tensor.permute(1, 2, 0).numpy())
    d = ImageDraw.Draw(im)
    for r, b in zip(result.rough, result.boxes):
        d.rectangle([r[0], r[1], r[0] + r[2] - 1, r[1] + r[3] - 1], outline=(255, 64, 64), width=1)
        d.rectangle([b[0], b[1], b[0] + b[2] - 1, b[1] + b[3] - 1], outline=(64, 255, 64), width=1)
    im.save(out)


def _parse_box(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected x,y,w,h numbers") from None
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected 4 numbers x,y,w,h")
    return vals


def cli_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="snapper snap", description="Snap rough boxes on one image; prints JSON.")
    p.add_argument("image")
    p.add_argument("--box", action="append", type=_parse_box, required=True, help="x,y,w,h (repeatable)")
    p.add_argument("--checkpoint", default="models:/snapper/latest",
                   help="checkpoint folder, or an MLflow model reference (models:/NAME/VERSION|latest)")
    p.add_argument("--buffer-ratio", type=float, default=1.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write a PNG with rough (red) and snapped (green) boxes")
    args = p.parse_args(argv)
    ckpt = args.checkpoint
    if not Path(ckpt).is_dir():
        from snapper.tracking import resolve_model

        ckpt = str(resolve_model(ckpt))
    try:
        snapper = Snapper.from_checkpoint(ckpt, device=args.device)
        result = snapper.snap(args.image, args.box, buffer_ratio=args.buffer_ratio)
    except (ValueError, FileNotFoundError) as e:
        print(f"snapper snap: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"image": args.image, "boxes": result.to_json()}, indent=2))
    if args.out:
        draw_overlay(args.image, result, args.out)
    return 0
