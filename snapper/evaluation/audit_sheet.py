"""The audit's contact sheet: one HTML page with a thumbnail per top suspect (JPEG embedded, so
the page travels alone), the annotated box and the model's proposed box drawn in two colours,
the suspect edges drawn thick, and a caption with the per-edge numbers.

The caller (:mod:`snapper.batch.audit`) resolves each image path; an image that cannot be read
gets a caption without a picture, never an error.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from snapper.atomic import atomic_write_text
from snapper.errors import UserInputError
from snapper.geometry import EDGE_NAMES
from snapper.imageio import load_image

ANNOTATED_COLOUR = (255, 64, 64)  # red: the box as annotated
PROPOSED_COLOUR = (0, 200, 255)  # cyan: the model's edges
THUMB = 240  # longest side of a thumbnail (px)
MARGIN = 0.3  # context around the two boxes, as a share of their union's size


@dataclass
class Suspect:
    """One flagged box: ranks, ids, its image, both boxes (xyxy, original px), per-edge numbers."""

    rank: int
    annotation_id: int
    file_name: str
    image_path: Path | None
    annotated: list[float]
    proposed: list[float]
    score: float
    delta_px: list[float]
    confidence: list[float]
    suspect: list[str] = field(default_factory=list)


def _window(a: np.ndarray, p: np.ndarray, w: int, h: int) -> tuple[int, int, int, int]:
    lo, hi = np.minimum(a[:2], p[:2]), np.maximum(a[2:], p[2:])
    pad = MARGIN * (hi - lo) + 4
    x0, y0 = np.floor(np.maximum(lo - pad, 0)).astype(int)
    x1, y1 = np.ceil(np.minimum(hi + pad, (w, h))).astype(int)
    return int(x0), int(y0), max(int(x1), int(x0) + 1), max(int(y1), int(y0) + 1)


def _draw_box(d: ImageDraw.ImageDraw, box: np.ndarray, colour: tuple[int, int, int], thick: set[str]) -> None:
    x0, y0, x1, y1 = box
    lines = {"left": (x0, y0, x0, y1), "top": (x0, y0, x1, y0), "right": (x1, y0, x1, y1), "bottom": (x0, y1, x1, y1)}
    for e, xy in lines.items():
        d.line(xy, fill=colour, width=3 if e in thick else 1)


def thumbnail(s: Suspect) -> bytes | None:
    """JPEG bytes of the suspect's neighbourhood with both boxes drawn, or None when the image
    cannot be read."""
    if s.image_path is None:
        return None
    try:
        img = load_image(s.image_path, max_pixels=None)
    except (UserInputError, OSError):
        return None
    arr = img.tensor.permute(1, 2, 0).numpy()
    a, p = np.asarray(s.annotated, np.float64), np.asarray(s.proposed, np.float64)
    x0, y0, x1, y1 = _window(a, p, img.width, img.height)
    crop = Image.fromarray(np.ascontiguousarray(arr[y0:y1, x0:x1]))
    scale = THUMB / max(crop.size)
    crop = crop.resize((max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale))), Image.BILINEAR)
    d = ImageDraw.Draw(crop)
    off = np.array([x0, y0, x0, y0], np.float64)
    _draw_box(d, (a - off) * scale, ANNOTATED_COLOUR, set(s.suspect))
    _draw_box(d, (p - off) * scale, PROPOSED_COLOUR, set(s.suspect))
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=88)  # a tenth of a PNG's size: a page of 60 stays small
    return buf.getvalue()


def _caption(s: Suspect) -> str:
    rows = "".join(
        f"<tr{' class=s' if e in s.suspect else ''}><td>{e}</td><td>{dp:.1f}</td><td>{c:.2f}</td></tr>"
        for e, dp, c in zip(EDGE_NAMES, s.delta_px, s.confidence))
    return (f"<b>#{s.rank}</b> ann {s.annotation_id} score {s.score:.3f}<br>{html.escape(s.file_name)}"
            f"<table><tr><th>edge</th><th>|&Delta;| px</th><th>conf</th></tr>{rows}</table>")


def write_sheet(suspects: list[Suspect], path: str | os.PathLike[str], title: str) -> Path:
    """``path``: the HTML contact sheet of ``suspects`` (in the order given)."""
    cells = []
    for s in suspects:
        jpg = thumbnail(s)
        pic = (f'<img src="data:image/jpeg;base64,{base64.b64encode(jpg).decode()}">' if jpg
               else "<div class=missing>image not readable</div>")
        cells.append(f"<div class=cell>{pic}<div>{_caption(s)}</div></div>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:sans-serif;font-size:12px}} .cell{{display:inline-block;vertical-align:top;margin:6px;width:{THUMB + 10}px}}
table{{border-collapse:collapse}} td,th{{padding:0 4px}} tr.s td{{font-weight:bold;color:#b00}}
.missing{{width:{THUMB}px;height:60px;background:#eee}}</style></head><body>
<h2>{html.escape(title)}</h2><p><span style="color:rgb{ANNOTATED_COLOUR}">&#9632; annotated box</span>
&nbsp; <span style="color:rgb{PROPOSED_COLOUR}">&#9632; proposed (snapped) box</span>
&nbsp; thick lines: the suspect edges</p>
{''.join(cells)}</body></html>"""
    return atomic_write_text(path, page)
