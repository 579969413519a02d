"""Box conventions, validation and the jitter protocols (the paper's, or measured noise).

Conventions (one for the whole project):

* Public boundaries (COCO JSON, CLI, the snap API, Parquet tables) use COCO ``[x, y, w, h]``
  in pixels of the original image.
* Internally boxes are ``[x0, y0, x1, y1]`` float64 in *continuous* pixel coordinates: pixel
  ``i`` covers ``[i, i + 1)``, so a box covering pixels 10..19 is ``x0=10, x1=20`` and the
  image spans ``[0, W] x [0, H]``. This matches COCO (``x1 = x + w``) and torchvision's
  ``roi_align(aligned=True)``.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from snapper.config import JitterConfig
from snapper.errors import BadBoxError, ConfigError

EDGE_NAMES = ("left", "top", "right", "bottom")  # order of the xyxy columns
CORNER_NAMES = ("top_left", "top_right", "bottom_right", "bottom_left")
# COCO's size buckets (pycocotools areaRng), by area in original pixels: small < 32^2 <= medium
# < 96^2 <= large. Evaluation buckets a box by its true area; a per-size calibration
# (ModelConfig.calibration) buckets it by its rough box, which inference knows.
SMALL_MAX_AREA = 32.0**2
MEDIUM_MAX_AREA = 96.0**2
SIZE_BUCKETS = ("small", "medium", "large")


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def box_problem(xywh: "np.ndarray | list[float]", width: float, height: float) -> str | None:
    """Why a COCO box cannot be used, or None when it can.

    The reasons are short stable strings so that manifests and batch reports can count them.
    """
    b = np.asarray(xywh, dtype=np.float64).reshape(-1)
    if b.shape != (4,):
        return "malformed"
    if not np.all(np.isfinite(b)):
        return "non_finite"
    x, y, w, h = b
    if w <= 0 or h <= 0:
        return "degenerate"
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "outside_image"
    return None


def validate_box(xywh: "np.ndarray | list[float]", width: float, height: float, name: str = "box") -> None:
    """Raise a BadBoxError (a ValueError) that names the box when it cannot be snapped."""
    problem = box_problem(xywh, width, height)
    if problem is not None:
        raise BadBoxError(f"{name} {list(np.asarray(xywh).reshape(-1))!r} is unusable ({problem}) "
                         f"for an image of {width}x{height}")


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    b[:, [0, 2]] = b[:, [0, 2]].clip(0.0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0.0, height)
    return b


def size_bucket(area: np.ndarray) -> np.ndarray:
    """COCO size bucket names for an array of areas (px^2)."""
    a = np.asarray(area, dtype=np.float64)
    return np.where(a < SMALL_MAX_AREA, "small", np.where(a < MEDIUM_MAX_AREA, "medium", "large"))


def paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of a[i] with b[i] (xyxy), vectorised; 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = (np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])).clip(min=0)
    ih = (np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])).clip(min=0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]).clip(min=0) * (a[:, 3] - a[:, 1]).clip(min=0)
    area_b = (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def jitter_boxes(
    boxes: np.ndarray,
    width: float,
    height: float,
    rng: np.random.Generator,
    cfg: JitterConfig | None = None,
) -> np.ndarray:
    """The paper's rough boxes from ground truth (xyxy in, xyxy out).

    1. shift the centre uniformly by up to ``shift`` x width (x) and x height (y);
    2. rescale width and height by a ratio uniform in ``[scale_min, scale_max]``
       (one ratio for both axes by default, which reproduces the paper's baseline row);
    3. clip to the image.
    """
    cfg = cfg or JitterConfig()
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(b)
    if cfg.mode == "empirical":
        offsets = edge_offsets(cfg.noise_file)  # type: ignore[arg-type]
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        drawn = offsets[rng.integers(len(offsets), size=n)]  # four edges together: their correlation kept
        return clip_boxes(b + drawn * np.stack([w, h, w, h], axis=1), width, height)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    cx = (b[:, 0] + b[:, 2]) / 2 + rng.uniform(-cfg.shift, cfg.shift, n) * w
    cy = (b[:, 1] + b[:, 3]) / 2 + rng.uniform(-cfg.shift, cfg.shift, n) * h
    rw = rng.uniform(cfg.scale_min, cfg.scale_max, n)
    rh = rw if cfg.shared_ratio else rng.uniform(cfg.scale_min, cfg.scale_max, n)
    out = np.stack([cx - w * rw / 2, cy - h * rh / 2, cx + w * rw / 2, cy + h * rh / 2], axis=1)
    return clip_boxes(out, width, height)


NOISE_COLUMNS = tuple(f"norm_{e}" for e in EDGE_NAMES)  # of snapper noise-report's pairs.parquet


def edge_offsets(noise_file: str | os.PathLike[str]) -> np.ndarray:
    """(N, 4) measured edge offsets in units of the true box's extent (left, top, right,
    bottom; positive = right/down), read once per file version."""
    p = Path(noise_file)
    try:
        st = p.stat()
    except OSError as e:
        raise ConfigError(f"jitter.noise_file={noise_file}: {e.strerror or e}") from None
    return _read_offsets(str(p.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _read_offsets(path: str, mtime_ns: int, size: int) -> np.ndarray:
    try:
        df = pd.read_parquet(path, columns=list(NOISE_COLUMNS))
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds; all mean "not that file"
        raise ConfigError(f"jitter.noise_file={path}: not a noise-report pairs.parquet with {', '.join(NOISE_COLUMNS)} "
                          f"({type(e).__name__})") from None
    offsets = df.to_numpy(np.float64)
    offsets = offsets[np.isfinite(offsets).all(axis=1) & (1 + offsets[:, 2] - offsets[:, 0] > 0)
                      & (1 + offsets[:, 3] - offsets[:, 1] > 0)]
    if not len(offsets):
        raise ConfigError(f"jitter.noise_file={path}: no usable pairs")
    return offsets


MIN_COVERAGE = 0.99  # share of measured boxes whose true box a crop should hold


def _inside_crop(offsets: np.ndarray, context: float) -> np.ndarray:
    """Per measured box: whether the true box lies inside the crop cut around the rough box
    (``context`` x its extent). ``offsets`` are rough - true edges in units of the true extent."""
    o = np.asarray(offsets, dtype=np.float64).reshape(-1, 4)
    margin = (context - 1.0) / 2.0
    rw, rh = 1.0 + o[:, 2] - o[:, 0], 1.0 + o[:, 3] - o[:, 1]  # rough extent / true extent
    return ((o[:, 0] <= margin * rw) & (o[:, 2] >= -margin * rw)
            & (o[:, 1] <= margin * rh) & (o[:, 3] >= -margin * rh))


def crop_coverage(offsets: np.ndarray, context: float) -> float:
    """Share of measured boxes whose true box a crop of ``context`` holds."""
    return float(_inside_crop(offsets, context).mean())


def context_for(offsets: np.ndarray, coverage: float = MIN_COVERAGE) -> float:
    """The smallest context (in steps of 0.05) whose crops hold ``coverage`` of the true boxes."""
    c = 1.0
    while crop_coverage(offsets, c) < coverage and c < 4.0:
        c = round(c + 0.05, 2)
    return c


def annotation_rng(annotation_id: int, seed: int = 0) -> np.random.Generator:
    """A generator that depends only on (seed, annotation id): evaluation jitter is reproducible
    whatever order, sharding or worker split the boxes arrive in."""
    digest = hashlib.blake2b(f"{seed}:{int(annotation_id)}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def jitter_by_annotation(
    boxes: np.ndarray,
    annotation_ids: "np.ndarray | list[int]",
    width: float,
    height: float,
    cfg: JitterConfig | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Deterministic jitter: box i is jittered with a generator seeded by its annotation id."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.empty_like(b)
    for i, ann_id in enumerate(annotation_ids):
        out[i] = jitter_boxes(b[i : i + 1], width, height, annotation_rng(int(ann_id), seed), cfg)[0]
    return out
