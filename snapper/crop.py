"""Crop windows around rough boxes and the exact coordinate maps between three frames.

* original: pixels of the full image (continuous coordinates, see ``geometry``);
* crop:     original pixels relative to the crop window's top-left corner;
* input:    the model input, ``size x size``; each axis is scaled on its own, so the crop is
            stretched to a square. Edges are decoded per axis, so anisotropic scaling costs
            nothing and gives thin objects the full input resolution on their short side.

A window is ``[x0, y0, x1, y1]`` in original pixels and may extend past the image; the part
outside is zero padding (after normalisation: the dataset mean, i.e. "no signal").
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import roi_align

MIN_WINDOW = 1.0  # px; a window is never thinner than one original pixel


def crop_windows(rough: np.ndarray, buffer_ratio: float = 1.0, context: float = 1.4) -> np.ndarray:
    """Windows (xyxy, original px) centred on the rough boxes, ``buffer_ratio * context`` times
    their size on each axis."""
    if not np.isfinite(buffer_ratio) or buffer_ratio <= 0:
        raise ValueError(f"buffer_ratio must be a positive number, got {buffer_ratio!r}")
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


def crop_images(
    image: torch.Tensor,
    windows: np.ndarray,
    size: int,
    image_scale: tuple[float, float] = (1.0, 1.0),
) -> torch.Tensor:
    """Resample each window of one image to ``size x size`` with area averaging.

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
    if len(w) == 0:
        return image.new_zeros((0, image.shape[0], size, size), dtype=torch.float32)
    img = image.to(torch.float32).unsqueeze(0)
    rois = torch.cat([torch.zeros(len(w), 1), w], dim=1).to(img.device)
    return roi_align(img, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
