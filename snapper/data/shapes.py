"""Drawing primitives of the synthetic scenes (:mod:`snapper.data.synthetic`): shape outlines
as drawing ops, their supersampled rasterisation, and the fill patterns and colours.

Pure functions of a ``numpy`` generator and numbers: the scene module decides what goes where,
this one only how it is drawn, so the two can be read (and tested) apart.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

# ------------------------------------------------------------------------------- shapes
# A shape is a list of drawing ops in pixel coordinates relative to the object's centre:
#   ("poly", points (n, 2), fill 255 | 0)   -- fill 0 cuts a hole (ring)
#   ("line", points (n, 2), width_px)       -- thin parts keep their width when scaled
#   ("disc", centre (1, 2), radius_px)
# Builders work in unit coordinates (radius ~1) and report the unit area of the filled
# body, so the object can be scaled to a target area.

Op = tuple[str, np.ndarray, float]


def _rot(points: np.ndarray, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return points @ np.array([[c, s], [-s, c]])


def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _ellipse_pts(a: float, b: float, n: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([a * np.cos(t), b * np.sin(t)], axis=1)


def _theta(rng: np.random.Generator, axis_aligned_prob: float = 0.0) -> float:
    return 0.0 if rng.random() < axis_aligned_prob else float(rng.uniform(0, 2 * np.pi))


def _shape_polygon(rng: np.random.Generator) -> tuple[list[Op], float]:
    """Convex polygon (vertices in angular order on an ellipse); often an upright rectangle."""
    b = rng.uniform(0.35, 1.0)
    if rng.random() < 0.35:
        p = np.array([[-1, -b], [1, -b], [1, b], [-1, b]], dtype=np.float64)
        p = _rot(p, _theta(rng, 0.6))
    else:
        n = int(rng.integers(3, 9))
        t = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(-0.35, 0.35, n) * (2 * np.pi / n)
        p = _rot(np.stack([np.cos(t), b * np.sin(t)], axis=1), _theta(rng))
    return [("poly", p, 255)], _poly_area(p)


def _shape_star(rng: np.random.Generator) -> tuple[list[Op], float]:
    """Concave star-shaped polygon: spikes, or irregular radii."""
    n = int(rng.integers(4, 9))
    t = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False)
    if rng.random() < 0.5:
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.35, 0.75))
        r = r * rng.uniform(0.85, 1.0, 2 * n)
    else:
        r = rng.uniform(0.4, 1.0, 2 * n)
    p = np.stack([r * np.cos(t), r * np.sin(t) * rng.uniform(0.5, 1.0)], axis=1)
    p = _rot(p, _theta(rng))
    return [("poly", p, 255)], _poly_area(p)


def _shape_ellipse(rng: np.random.Generator) -> tuple[list[Op], float]:
    p = _rot(_ellipse_pts(1.0, rng.uniform(0.3, 1.0), 96), _theta(rng))
    return [("poly", p, 255)], _poly_area(p)


def _blob_pts(rng: np.random.Generator, n: int = 120) -> np.ndarray:
    """Smooth random closed curve: a radius with a few random low harmonics."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 7):
        r += rng.uniform(0, 0.32) / k**0.7 * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = np.clip(r, 0.25, None)
    return np.stack([r * np.cos(t), r * np.sin(t) * rng.uniform(0.5, 1.0)], axis=1)


def _shape_blob(rng: np.random.Generator) -> tuple[list[Op], float]:
    p = _rot(_blob_pts(rng), _theta(rng))
    return [("poly", p, 255)], _poly_area(p)


def _shape_handle(rng: np.random.Generator) -> tuple[list[Op], float]:
    """A body with a thin stick (1-3.5 px wide whatever the scale) that often sets an edge."""
    u = rng.random()
    if u < 0.4:
        body = _ellipse_pts(1.0, rng.uniform(0.45, 1.0), 72)
    elif u < 0.7:
        b = rng.uniform(0.4, 1.0)
        body = np.array([[-1, -b], [1, -b], [1, b], [-1, b]], dtype=np.float64)
    else:
        body = _blob_pts(rng)
    theta = _theta(rng, 0.3)
    body = _rot(body, theta)
    psi = float(rng.uniform(0, 2 * np.pi))
    length = rng.uniform(1.5, 2.6)
    bend = rng.uniform(-0.25, 0.25)  # slightly bent sticks look less synthetic
    s = np.linspace(0.0, length, 6)[:, None]
    direction = np.array([math.cos(psi), math.sin(psi)])
    normal = np.array([-direction[1], direction[0]])
    stick = s * direction + bend * (s / length) ** 2 * length * normal
    width = float(rng.uniform(1.0, 3.5))
    ops: list[Op] = [("poly", body, 255), ("line", stick, width)]
    if rng.random() < 0.35:
        ops.append(("disc", stick[-1:], float(rng.uniform(1.5, 4.0))))
    return ops, _poly_area(body)


def _shape_ring(rng: np.random.Generator) -> tuple[list[Op], float]:
    """Annulus (thin or thick): the box is set by a band a few pixels wide."""
    b = rng.uniform(0.5, 1.0)
    inner = rng.uniform(0.55, 0.9)
    theta = _theta(rng)
    outer = _rot(_ellipse_pts(1.0, b, 96), theta)
    offset = rng.uniform(-0.08, 0.08, 2)
    hole = _rot(_ellipse_pts(inner, b * inner, 96), theta) + offset
    return [("poly", outer, 255), ("poly", hole, 0)], _poly_area(outer) - _poly_area(hole)


def _shape_lshape(rng: np.random.Generator) -> tuple[list[Op], float]:
    """Rectilinear concave outline (L, T or U), often upright like man-made objects."""
    w, h = 1.0, rng.uniform(0.6, 1.4)
    t = rng.uniform(0.25, 0.5)
    kind = rng.integers(0, 3)
    if kind == 0:  # L
        p = [(0, 0), (w, 0), (w, t), (t, t), (t, h), (0, h)]
    elif kind == 1:  # T
        a, c = (w - t) / 2, (w + t) / 2
        p = [(0, 0), (w, 0), (w, t), (c, t), (c, h), (a, h), (a, t), (0, t)]
    else:  # U
        p = [(0, 0), (t, 0), (t, h - t), (w - t, h - t), (w - t, 0), (w, 0), (w, h), (0, h)]
    q = np.array(p, dtype=np.float64) - np.array([w / 2, h / 2])
    q = _rot(q * 2.0, _theta(rng, 0.5))
    return [("poly", q, 255)], _poly_area(q)


SHAPE_BUILDERS = (_shape_polygon, _shape_star, _shape_ellipse, _shape_blob, _shape_handle, _shape_ring, _shape_lshape)


def scale_ops(ops: list[Op], k: float, cx: float, cy: float) -> list[Op]:
    centre = np.array([cx, cy])
    return [(kind, pts * k + centre, val) for kind, pts, val in ops]


def ops_extent(ops: list[Op]) -> tuple[float, float, float, float]:
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for kind, pts, val in ops:
        pad = 0.0 if kind == "poly" else float(val) + 1.0
        lo = np.minimum(lo, pts.min(0) - pad)
        hi = np.maximum(hi, pts.max(0) + pad)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def draw_mask(ops: list[Op], x0: int, y0: int, pw: int, ph: int, s: int) -> np.ndarray:
    """Rasterise ops at s x resolution over the output-pixel patch [x0, x0+pw) x [y0, y0+ph)."""
    im = Image.new("L", (pw * s, ph * s), 0)
    draw = ImageDraw.Draw(im)
    origin = np.array([x0, y0], dtype=np.float64)
    for kind, pts, val in ops:
        q = (pts - origin) * s
        if kind == "poly":
            draw.polygon([tuple(v) for v in q.tolist()], fill=int(val))
        elif kind == "line":
            draw.line([tuple(v) for v in q.tolist()], fill=255, width=max(1, int(round(val * s))), joint="curve")
        else:  # disc
            r = val * s
            (cx, cy), = q.tolist()
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    return np.asarray(im) > 0


# ------------------------------------------------------------------------------ textures


def value_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid upsampled bicubically."""
    gh = max(2, int(round(h / cells)) + 2)
    gw = max(2, int(round(w / cells)) + 2)
    grid = Image.fromarray(rng.random((gh, gw), dtype=np.float32), mode="F")
    return np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def pattern(rng: np.random.Generator, kind: str, xs: np.ndarray, ys: np.ndarray, scale: float) -> np.ndarray:
    """A field t in [0, 1] over pixel-centre coordinates (relative to the object centre)."""
    h, w = ys.shape[0], xs.shape[1]
    if kind == "solid":
        return np.zeros((h, w), np.float32)
    phi = rng.uniform(0, 2 * np.pi)
    u = xs * math.cos(phi) + ys * math.sin(phi)
    v = -xs * math.sin(phi) + ys * math.cos(phi)
    if kind == "linear":
        return np.clip(u / (2 * scale) + 0.5, 0, 1).astype(np.float32)
    if kind == "radial":
        off = rng.uniform(-0.4, 0.4, 2) * scale
        d = np.sqrt((xs - off[0]) ** 2 + (ys - off[1]) ** 2) / scale
        return np.clip(d, 0, 1).astype(np.float32)
    if kind == "stripes":
        period = rng.uniform(3.0, max(4.0, min(24.0, scale)))
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
        return (t > 0.5).astype(np.float32) if rng.random() < 0.5 else t.astype(np.float32)
    if kind == "checker":
        period = rng.uniform(3.0, max(4.0, min(18.0, scale)))
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    return value_noise(rng, h, w, rng.uniform(2.0, 12.0))  # "noise"


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def contrast_offset(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    d = rng.normal(size=3)
    return d / (np.linalg.norm(d) + 1e-9) * rng.uniform(lo, hi)
