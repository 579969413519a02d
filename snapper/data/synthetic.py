"""The embedded default dataset: procedurally generated scenes with exact, tight boxes.

Why it exists: the demo, the tests and CI need a COCO-format dataset without downloads, and
one whose boxes are *exactly* right (real annotations are off by a pixel or two, which
blurs the very thing Snapper is measured on). The scenes are built to exercise what makes
edge snapping hard: low-contrast objects, textured fills with strong inner edges, thin
parts that decide an edge (handles, rings), concave outlines, occlusion, objects cut by the
image border, background clutter, noise, blur and JPEG artefacts.

Definitions (the contract the tests check):

* **Rendering / anti-aliasing.** Object outlines are rasterised at ``supersample`` x the
  image resolution (default 2; a power of two so box values are exact binary fractions).
  An object's hi-res *visible mask* is its outline minus the outlines of every object drawn
  over it, clipped to the image. Each output pixel mixes the background and the objects by
  the fraction of its ``s x s`` sub-pixels each visible mask covers (box-filter
  supersampling). Textures are evaluated at output-pixel centres.
* **Box.** The tight bounding box of the hi-res visible mask, divided by ``s``, in
  continuous pixel coordinates (pixel ``i`` spans ``[i, i+1)``): an object covering
  sub-pixels of output columns 10..19 entirely has ``x=10, w=10``; a box edge may fall on a
  half pixel when the outline covers only part of a pixel. Boxes never leave the image.
* **area** is the visible mask area in output pixels (COCO semantics: the object's area,
  not its box's), so COCO size buckets (small < 32^2 <= medium < 96^2 <= large) apply.
* **Visibility rule.** Objects are decided front to back. An object is kept only if at
  least ``min_visible_fraction`` (default 30%) of its in-image outline is not covered by
  kept objects in front of it, its visible box is at least ``min_box_px`` (4 px) on both
  sides, and its visible area is at least ``min_area_px``. Border cutting is *not* counted
  as occlusion (a half-visible object at the border is kept, its box clipped). A dropped
  object is not drawn at all, so every drawn object is annotated (no phantom objects);
  since visibility only depends on objects in front, deciding front to back is final.
* **Clutter** (background texture, strokes, specks) is drawn behind all objects and is
  never annotated.

Everything is a pure function of ``(config, image index)`` (one ``numpy`` generator per
image seeded with ``[seed, index]``), so the same seed gives identical bytes.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from snapper.data.shapes import (
    SHAPE_BUILDERS,
    Op,
    contrast_offset,
    draw_mask,
    ops_extent,
    pattern,
    random_colour,
    scale_ops,
    value_noise,
)
from snapper.errors import OutputExistsError

# Bump when the rendering changes: a cached dataset made by another version is regenerated.
GENERATOR_VERSION = 1

CATEGORIES: tuple[str, ...] = ("polygon", "star", "ellipse", "blob", "handle", "ring", "lshape")
# Relative frequency of each shape kind (thin-part shapes a bit rarer: they are hard).
_KIND_PROBS = np.array([0.18, 0.14, 0.16, 0.18, 0.12, 0.10, 0.12])
_TEXTURES = ("solid", "linear", "radial", "stripes", "checker", "noise")
_TEXTURE_PROBS = np.array([0.22, 0.2, 0.13, 0.17, 0.1, 0.18])

SMALL_AREA = 32.0**2  # COCO size buckets
LARGE_AREA = 96.0**2
ANNOTATIONS_NAME = "annotations.json"
IMAGES_DIR = "images"
_INFO_KEY = "snapper_synthetic"


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines the dataset's bytes (stored in annotations.json "info").

    ``width``/``height`` are the nominal image size; each image is scaled by a factor drawn
    uniformly from ``[scale_min, scale_max]`` (defaults give 256x192 .. 384x288 around
    320x240). Set both to 1.0 for a fixed size. ``bucket_probs`` is the chance of drawing a
    small / medium / large object *before* occlusion and border cutting shrink it; the
    defaults land near 25% / 50% / 25% of kept boxes at the default size.
    """

    num_images: int = 300
    seed: int = 0
    width: int = 320
    height: int = 240
    scale_min: float = 0.8
    scale_max: float = 1.2
    min_objects: int = 3
    max_objects: int = 9
    max_large: int = 3
    border_prob: float = 0.25  # chance an object is placed anywhere (often cut by the border)
    supersample: int = 2
    # (small, medium, large) weights. A bare ``tuple`` hint: snapper.config's --set type check
    # has no parameterised tuples, and a hint it cannot check would fail every --set.
    bucket_probs: tuple[float, float, float] = (0.22, 0.38, 0.40)
    min_visible_fraction: float = 0.3
    min_box_px: float = 4.0
    min_area_px: float = 12.0
    low_contrast_prob: float = 0.15
    max_strokes: int = 14
    noise_max: float = 6.0
    blur_prob: float = 0.35
    blur_max: float = 1.0
    jpeg_min: int = 60
    jpeg_max: int = 95

    def __post_init__(self) -> None:
        problems = []
        if self.num_images < 0:
            problems.append("num_images must be >= 0")
        if self.seed < 0:
            problems.append("seed must be >= 0")
        if self.width < 16 or self.height < 16:
            problems.append("width and height must be >= 16")
        if not 0 < self.scale_min <= self.scale_max:
            problems.append("need 0 < scale_min <= scale_max")
        if not 1 <= self.min_objects <= self.max_objects:
            problems.append("need 1 <= min_objects <= max_objects")
        if self.supersample not in (1, 2, 4, 8):
            problems.append("supersample must be 1, 2, 4 or 8 (exact binary box values)")
        if len(self.bucket_probs) != 3 or min(self.bucket_probs) < 0 or sum(self.bucket_probs) <= 0:
            problems.append("bucket_probs must be three non-negative weights")
        if not 0 <= self.min_visible_fraction <= 1:
            problems.append("min_visible_fraction must be in [0, 1]")
        if not 1 <= self.jpeg_min <= self.jpeg_max <= 100:
            problems.append("need 1 <= jpeg_min <= jpeg_max <= 100")
        if problems:
            raise ValueError("invalid SynthConfig: " + "; ".join(problems))
        object.__setattr__(self, "bucket_probs", tuple(float(p) for p in self.bucket_probs))

    def to_json(self) -> dict[str, Any]:
        """JSON-normalised parameters (tuples become lists) for storing and comparing."""
        return json.loads(json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True))


@dataclass
class SceneObject:
    category_id: int  # 1-based index into CATEGORIES
    box_xywh: tuple[float, float, float, float]
    area: float  # visible area in output pixels
    visible_fraction: float  # of the in-image outline, after occlusion
    mask: np.ndarray  # bool hi-res visible mask of the patch (rows, cols) = (y, x)
    origin: tuple[int, int]  # (x, y) of mask[0, 0] in hi-res image coordinates


@dataclass
class Scene:
    """One rendered image with its ground truth and the intermediate layers (for checks)."""

    width: int
    height: int
    supersample: int
    image: np.ndarray  # (H, W, 3) uint8, final pixels before JPEG
    clean: np.ndarray  # (H, W, 3) float32, objects over background, before noise/blur
    background: np.ndarray  # (H, W, 3) float32, background + clutter only
    jpeg_quality: int
    objects: list[SceneObject] = field(default_factory=list)


# ---------------------------------------------------------------------------- background


def _background(rng: np.random.Generator, w: int, h: int, cfg: SynthConfig) -> np.ndarray:
    """Gradient + multi-octave noise + optional pattern, then unannotated strokes and specks."""
    ys = np.arange(h, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float32)[None, :] + 0.5
    c0 = random_colour(rng)
    c1 = np.clip(c0 + contrast_offset(rng, 0, 70), 0, 255)
    phi = rng.uniform(0, 2 * np.pi)
    t = (xs * math.cos(phi) + ys * math.sin(phi)) / max(w, h)
    t = (t - t.min()) / (t.max() - t.min() + 1e-9)
    bg = c0 + t[..., None] * (c1 - c0)
    tint = 1.0 + rng.uniform(-0.3, 0.3, 3)
    for cells, amp in ((max(w, h) / 3.0, 35.0), (18.0, 18.0), (3.0, 10.0)):
        a = rng.uniform(0, amp)
        if a > 1:
            bg = bg + (value_noise(rng, h, w, cells)[..., None] - 0.5) * a * tint
    if rng.random() < 0.3:
        kind = str(rng.choice(["stripes", "checker", "noise"]))
        pat = pattern(rng, kind, xs, ys, scale=float(rng.uniform(6, 40)))
        bg = bg + (pat[..., None] - 0.5) * rng.uniform(8, 30)
    bg8 = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    n = int(rng.integers(0, cfg.max_strokes + 1))
    if n == 0:
        return np.asarray(bg8, dtype=np.float32)
    s = cfg.supersample
    hi = bg8.resize((w * s, h * s), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(hi)
    for _ in range(n):
        colour = tuple(int(c) for c in random_colour(rng))
        width = max(1, int(round(rng.uniform(0.5, 3.0) * s)))
        kind = rng.random()
        if kind < 0.35:  # random-walk polyline
            m = int(rng.integers(2, 8))
            start = rng.uniform(0, 1, 2) * [w, h]
            steps = rng.normal(0, 0.12, (m, 2)) * [w, h]
            pts = (np.cumsum(np.vstack([start, steps]), axis=0) * s).tolist()
            draw.line([tuple(p) for p in pts], fill=colour, width=width, joint="curve")
        elif kind < 0.6:  # arc
            cx, cy = rng.uniform(0, 1, 2) * [w, h]
            r = rng.uniform(4, 0.5 * max(w, h))
            a0 = rng.uniform(0, 360)
            draw.arc([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], a0, a0 + rng.uniform(30, 270),
                     fill=colour, width=width)
        else:  # specks: tiny blobs below the annotation size
            for _ in range(int(rng.integers(1, 6))):
                cx, cy = rng.uniform(0, 1, 2) * [w, h]
                r = rng.uniform(0.5, 1.6) * s
                draw.ellipse([cx * s - r, cy * s - r, cx * s + r, cy * s + r], fill=colour)
    return np.asarray(hi.reduce(s), dtype=np.float32)


# ---------------------------------------------------------------------------------- scene


@dataclass
class _Spec:
    kind: int
    ops: list[Op]


def _object_specs(rng: np.random.Generator, w: int, h: int, cfg: SynthConfig) -> list[_Spec]:
    """Draw the objects of one image, back to front (larger ones tend to lie behind)."""
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    probs = np.asarray(cfg.bucket_probs) / sum(cfg.bucket_probs)
    top = max(96.0 * 1.05, 0.8 * math.sqrt(w * h))
    ranges = ((8.0, 32.0), (32.0, 96.0), (96.0, top))
    specs: list[tuple[float, _Spec]] = []
    large = 0
    for _ in range(n):
        bucket = int(rng.choice(3, p=probs))
        if bucket == 2:
            large += 1
            if large > cfg.max_large:
                bucket = 1
        lo, hi = ranges[bucket]
        side = math.exp(rng.uniform(math.log(lo), math.log(hi)))  # sqrt of the target area
        kind = int(rng.choice(len(CATEGORIES), p=_KIND_PROBS / _KIND_PROBS.sum()))
        ops, unit_area = SHAPE_BUILDERS[kind](rng)
        k = side / math.sqrt(max(unit_area, 1e-3))
        ex0, ey0, ex1, ey1 = ops_extent(scale_ops(ops, k, 0.0, 0.0))
        if rng.random() < cfg.border_prob or ex1 - ex0 >= w or ey1 - ey0 >= h:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)  # may be cut by the border
        else:
            cx, cy = rng.uniform(-ex0, w - ex1), rng.uniform(-ey0, h - ey1)
        depth = -math.log(side) + rng.normal(0, 0.6)
        specs.append((depth, _Spec(kind, scale_ops(ops, k, cx, cy))))
    specs.sort(key=lambda d: d[0])
    return [s for _, s in specs]


def _object_texture(rng: np.random.Generator, bg: np.ndarray, ops: list[Op], x0: int, y0: int,
                    pw: int, ph: int, cfg: SynthConfig) -> np.ndarray:
    ex0, ey0, ex1, ey1 = ops_extent(ops)
    cx, cy = (ex0 + ex1) / 2, (ey0 + ey1) / 2
    scale = max(ex1 - ex0, ey1 - ey0, 2.0) / 2
    if rng.random() < cfg.low_contrast_prob:
        h, w = bg.shape[:2]
        ref = bg[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))]
        c1 = np.clip(ref + contrast_offset(rng, 14, 32), 0, 255)
        c2 = np.clip(c1 + contrast_offset(rng, 0, 20), 0, 255)
    else:
        c1 = random_colour(rng)
        c2 = np.clip(c1 + contrast_offset(rng, 20, 160), 0, 255) if rng.random() < 0.7 else random_colour(rng)
    kind = str(rng.choice(_TEXTURES, p=_TEXTURE_PROBS / _TEXTURE_PROBS.sum()))
    xs = np.arange(x0, x0 + pw, dtype=np.float32)[None, :] + 0.5 - cx
    ys = np.arange(y0, y0 + ph, dtype=np.float32)[:, None] + 0.5 - cy
    t = pattern(rng, kind, xs, ys, scale)
    tex = c1 + t[..., None] * (c2 - c1)
    if rng.random() < 0.5:  # grain inside the object, independent of the image noise
        tex = tex + rng.normal(0, rng.uniform(1, 8), (ph, pw, 1))
    return tex.astype(np.float32)


def render_scene(cfg: SynthConfig, index: int) -> Scene:
    """Render image ``index`` of the dataset described by ``cfg`` (pure, deterministic)."""
    rng = np.random.default_rng([cfg.seed, index])
    s = cfg.supersample
    f = rng.uniform(cfg.scale_min, cfg.scale_max)
    w, h = max(16, int(round(cfg.width * f))), max(16, int(round(cfg.height * f)))
    bg = _background(rng, w, h, cfg)
    specs = _object_specs(rng, w, h, cfg)

    covered = np.zeros((h * s, w * s), dtype=bool)
    kept: list[tuple[_Spec, SceneObject, tuple[int, int, int, int], np.ndarray]] = []
    for spec in reversed(specs):  # front to back: visibility depends only on objects in front
        ex0, ey0, ex1, ey1 = ops_extent(spec.ops)
        x0, y0 = max(0, math.floor(ex0)), max(0, math.floor(ey0))
        x1, y1 = min(w, math.ceil(ex1) + 1), min(h, math.ceil(ey1) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        full = draw_mask(spec.ops, x0, y0, x1 - x0, y1 - y0, s)
        n_full = int(full.sum())
        if n_full == 0:
            continue
        region = covered[y0 * s : y1 * s, x0 * s : x1 * s]
        vis = full & ~region
        n_vis = int(vis.sum())
        if n_vis == 0:
            continue
        rows = np.flatnonzero(vis.any(axis=1))
        cols = np.flatnonzero(vis.any(axis=0))
        bx0, bx1 = (x0 * s + cols[0]) / s, (x0 * s + cols[-1] + 1) / s
        by0, by1 = (y0 * s + rows[0]) / s, (y0 * s + rows[-1] + 1) / s
        frac = n_vis / n_full
        area = n_vis / (s * s)
        if (frac < cfg.min_visible_fraction or bx1 - bx0 < cfg.min_box_px or by1 - by0 < cfg.min_box_px
                or area < cfg.min_area_px):
            continue  # dropped objects are not drawn, so they cannot occlude anything either
        region |= full
        obj = SceneObject(spec.kind + 1, (bx0, by0, bx1 - bx0, by1 - by0), area, frac, vis, (x0 * s, y0 * s))
        kept.append((spec, obj, (x0, y0, x1, y1), vis))
    kept.reverse()  # back to front, the order they were drawn in

    # Box-filter compositing: the visible masks are disjoint, so coverages simply add up.
    acc_colour = np.zeros((h, w, 3), np.float32)
    acc_alpha = np.zeros((h, w), np.float32)
    for spec, _obj, (x0, y0, x1, y1), vis in kept:
        pw, ph = x1 - x0, y1 - y0
        alpha = vis.reshape(ph, s, pw, s).sum(axis=(1, 3), dtype=np.float32) / (s * s)
        tex = _object_texture(rng, bg, spec.ops, x0, y0, pw, ph, cfg)
        acc_colour[y0:y1, x0:x1] += alpha[..., None] * tex
        acc_alpha[y0:y1, x0:x1] += alpha
    clean = bg * (1.0 - acc_alpha[..., None]) + acc_colour

    sigma = rng.uniform(0, cfg.noise_max)
    noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32) if sigma > 0.5 else clean
    im = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")
    if rng.random() < cfg.blur_prob:
        im = im.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, cfg.blur_max))))
    quality = int(rng.integers(cfg.jpeg_min, cfg.jpeg_max + 1))
    return Scene(w, h, s, np.asarray(im), clean, bg, quality, [o for _, o, _, _ in kept])


# ------------------------------------------------------------------------------ dataset


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="JPEG", quality=quality, subsampling=2, optimize=False)
    return buf.getvalue()


def _existing_params(out_dir: Path) -> dict[str, Any] | None:
    """The generator parameters stored in out_dir's annotations, or None if not ours/readable."""
    ann = out_dir / ANNOTATIONS_NAME
    try:
        with open(ann) as f:
            data = json.load(f)
        params = data["info"][_INFO_KEY]
        images = data["images"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all((out_dir / IMAGES_DIR / im["file_name"]).is_file() for im in images):
        return None  # damaged (an image is missing): regenerate
    return params if isinstance(params, dict) else None


def _build(cfg: SynthConfig, root: Path) -> dict[str, Any]:
    (root / IMAGES_DIR).mkdir(parents=True)
    images, annotations = [], []
    for i in range(cfg.num_images):
        scene = render_scene(cfg, i)
        name = f"{i:06d}.jpg"
        (root / IMAGES_DIR / name).write_bytes(_encode_jpeg(scene.image, scene.jpeg_quality))
        image_id = i + 1
        images.append({"id": image_id, "file_name": name, "width": scene.width, "height": scene.height})
        for obj in scene.objects:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": obj.category_id,
                "bbox": [float(v) for v in obj.box_xywh],
                "area": float(obj.area),
                "iscrowd": 0,
            })
    return {
        "info": {
            "description": "snapper synthetic scenes: procedurally generated, exact tight boxes",
            _INFO_KEY: cfg.to_json(),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)],
    }


def generate_from_config(out_dir: str | os.PathLike[str], cfg: SynthConfig) -> Path:
    """Write the dataset for ``cfg`` to ``out_dir``; no-op if it is already there.

    The dataset is built in a temporary folder beside ``out_dir`` and renamed into place, so
    a reader never sees a half-written dataset. An existing folder is replaced only if it is
    a synthetic dataset made with other parameters (or damaged); any other non-empty folder
    is refused rather than deleted.
    """
    out = Path(out_dir)
    ann = out / ANNOTATIONS_NAME
    wanted = cfg.to_json()
    if _existing_params(out) == wanted:
        return ann
    if out.exists():
        if not out.is_dir():
            raise OutputExistsError(f"{out}: exists and is not a directory")
        is_ours = ann.is_file() and _INFO_KEY in ann.read_text(errors="replace")[:100_000]
        if any(out.iterdir()) and not is_ours:
            raise OutputExistsError(f"{out}: non-empty and not a snapper synthetic dataset; refusing to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        data = _build(cfg, tmp)
        tmp_ann = tmp / ANNOTATIONS_NAME
        tmp_ann.write_text(json.dumps(data, separators=(",", ":")) + "\n")
        if _existing_params(out) == wanted:  # another process finished the same dataset first
            shutil.rmtree(tmp)
            return ann
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "d")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ann


def generate(
    out_dir: str | os.PathLike[str],
    num_images: int = 300,
    seed: int = 0,
    width: int = 320,
    height: int = 240,
    **options: Any,
) -> Path:
    """Generate (or reuse) the synthetic dataset; returns the annotations.json path.

    ``options`` are further :class:`SynthConfig` fields (e.g. ``scale_min=1, scale_max=1``
    for a fixed image size).
    """
    cfg = SynthConfig(num_images=num_images, seed=seed, width=width, height=height, **options)
    return generate_from_config(out_dir, cfg)


def summarize(ann_file: str | os.PathLike[str]) -> dict[str, int]:
    """Counts for a one-line report: images, boxes, and COCO size buckets by ``area``."""
    with open(ann_file) as f:
        data = json.load(f)
    areas = np.array([a["area"] for a in data["annotations"]], dtype=np.float64)
    return {
        "images": len(data["images"]),
        "boxes": int(areas.size),
        "small": int((areas < SMALL_AREA).sum()),
        "medium": int(((areas >= SMALL_AREA) & (areas < LARGE_AREA)).sum()),
        "large": int((areas >= LARGE_AREA).sum()),
    }
