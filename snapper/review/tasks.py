"""What ``review push`` and ``review pull`` agree on: the folder they read, the labelling config,
how a box is named in a task, and the files they write.

A review starts from a ``batch-snap`` (or ``audit``) output folder: ``snapped.json`` holds every
input annotation with its ``snapper`` object (rough box, per-edge confidence, status), and
``review.csv`` the annotation ids a person should look at, with the reasons. ``review_edges.csv``
(``--review-budget``) adds single edges to point at.

One Label Studio task per image with boxes to review. Each box is a region of the task's
prediction whose id is ``snapper-<annotation id>``: Label Studio copies a prediction's region
ids into the annotation the reviewer submits, so ``pull`` knows which box a region is even when
it was moved, relabelled or resized; a region the reviewer drew anew gets Label Studio's random
id and becomes an added box (or, when it overlaps a box whose region was deleted, that box).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import pandas as pd

from snapper.batch.schema import OUTPUT_JSON, REVIEW_CSV, REVIEW_EDGES_CSV
from snapper.errors import BadFileError, InputNotFoundError
from snapper.geometry import EDGE_NAMES

REVIEW_DIR = "review"  # under the batch output folder
PUSH_JSON = "push.json"
PULL_JSON = "pull.json"
REVIEWED_JSON = "reviewed.json"  # every input annotation (but removed ones) with the reviewed bbox, plus added boxes
GOLD_JSON = "gold.json"  # the boxes a person looked at: `snapper adapt GOLD IMAGES`
ROUGH_JSON = "rough.json"  # the annotators' rough boxes of the gold ones, same ids: `--rough`
ACCOUNT_PARQUET = "review.parquet"  # one row per input annotation (and per added box)

IMAGE_TAG, BOX_TAG = "image", "box"  # names in the labelling config
REGION_PREFIX = "snapper-"
MODEL_VERSION = "snapper-review"
KEY_FIELD, BOXES_FIELD, NOTE_FIELD = "snapper_key", "snapper_boxes", "snapper_note"
_EDGE_REASON = re.compile(r"^(?:low_confidence|guarded|audit):(left|top|right|bottom)$")


class ReviewInputError(BadFileError, ValueError):
    """The batch output folder cannot be reviewed as asked; names the file."""


@dataclass
class BatchOutput:
    """A batch output folder, read once: the COCO dict, annotations by id, the review list."""

    folder: Path
    data: dict[str, Any]
    flagged: dict[int, list[str]]  # annotation id -> reasons (review.csv)
    doubtful: dict[int, dict[str, float]]  # annotation id -> {edge: confidence} (review_edges.csv)

    @property
    def images(self) -> dict[int, dict[str, Any]]:
        return {im["id"]: im for im in self.data.get("images", []) if isinstance(im, dict) and "id" in im}

    @property
    def annotations(self) -> dict[int, dict[str, Any]]:
        return {a["id"]: a for a in self.data.get("annotations", [])}

    @property
    def review_dir(self) -> Path:
        return self.folder / REVIEW_DIR


def load_batch_output(folder: str | os.PathLike[str]) -> BatchOutput:
    """Read ``snapped.json`` and the review lists of a batch output folder (refusing a folder that
    is not one, naming what is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputNotFoundError(f"{folder}: no such folder (give the output folder of `snapper batch-snap` or "
                                 "`snapper audit`)")
    path = folder / OUTPUT_JSON
    if not path.is_file():
        raise ReviewInputError(f"{folder} holds no {OUTPUT_JSON}: is it the output folder of `snapper batch-snap`?")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ReviewInputError(f"{path}: not readable JSON ({e})") from None
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list) or not all(isinstance(a, dict) and isinstance(a.get("id"), int) for a in anns):
        raise ReviewInputError(f"{path}: 'annotations' must be a list of objects with integer ids")
    if not all(isinstance(a.get("snapper"), dict) for a in anns):
        raise ReviewInputError(f"{path}: annotations lack their 'snapper' object: was it written by `snapper batch-snap`?")
    return BatchOutput(folder, data, _flagged(folder / REVIEW_CSV, {a["id"] for a in anns}),
                       _doubtful(folder / REVIEW_EDGES_CSV))


def _flagged(path: Path, ids: set[int]) -> dict[int, list[str]]:
    if not path.is_file():
        raise ReviewInputError(f"{path} is missing: the review list of the batch run")
    df = pd.read_csv(path, keep_default_na=False)
    if "annotation_id" not in df:
        raise ReviewInputError(f"{path}: no annotation_id column")
    unknown = sorted(set(df["annotation_id"].astype(int)) - ids)
    if unknown:
        raise ReviewInputError(f"{path}: annotation ids {unknown[:5]} are not in {OUTPUT_JSON}")
    reasons = df["review"].astype(str) if "review" in df else pd.Series([""] * len(df))
    return {int(i): [r for r in str(s).split(";") if r] for i, s in zip(df["annotation_id"], reasons)}


def _doubtful(path: Path) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    if path.is_file():
        for r in pd.read_csv(path).itertuples(index=False):
            out.setdefault(int(r.annotation_id), {})[str(r.edge)] = float(r.confidence)
    return out


def doubtful_edges(batch: BatchOutput, ann: dict[str, Any]) -> dict[str, float | None]:
    """The edges to point the reviewer at: those the reasons name (low confidence, guarded,
    audit) and those on the edge review list, with their confidence (None when unknown)."""
    conf = ann["snapper"].get("confidence") or {}
    edges = {m.group(1) for r in batch.flagged.get(ann["id"], []) if (m := _EDGE_REASON.match(r))}
    edges |= set(batch.doubtful.get(ann["id"], {}))
    return {e: (conf.get(e) if isinstance(conf.get(e), (int, float)) else None) for e in EDGE_NAMES if e in edges}


# ------------------------------------------------------------------------------ labels, config


def label_names(categories: list[dict[str, Any]]) -> dict[int, str]:
    """Category id -> the label shown in Label Studio (``name``; ``name (id)`` where two share one)."""
    names = [(c.get("id"), str(c.get("name", c.get("id")))) for c in categories if isinstance(c, dict)]
    counts: dict[str, int] = {}
    for _, n in names:
        counts[n] = counts.get(n, 0) + 1
    return {i: (n if counts[n] == 1 else f"{n} ({i})") for i, n in names}


def label_config(labels: list[str]) -> str:
    """The image, the notes naming the doubtful edges above it, one RectangleLabels control."""
    items = "\n".join(f"    <Label value={quoteattr(v)}/>" for v in labels)
    return (f'<View>\n  <Header value="${NOTE_FIELD}" size="5"/>\n  <Image name="{IMAGE_TAG}" value="$image" zoom="true" '
            f'zoomControl="true"/>\n  <RectangleLabels name="{BOX_TAG}" toName="{IMAGE_TAG}" strokeWidth="2">\n{items}\n'
            "  </RectangleLabels>\n</View>")


def config_labels(config: str) -> list[str] | None:
    """The labels of the ``box`` control of a labelling config; None when it has no such control
    on an ``image`` tag (a project this command did not make)."""
    try:
        root = ET.fromstring(config or "")
    except ET.ParseError:
        return None
    images = {el.get("name") for el in root.iter("Image")}
    for el in root.iter("RectangleLabels"):
        if el.get("name") == BOX_TAG and el.get("toName") == IMAGE_TAG and IMAGE_TAG in images:
            return [lab.get("value", "") for lab in el.iter("Label")]
    return None


def task_key(image: dict[str, Any], anns: list[dict[str, Any]]) -> str:
    """A task's identity: the image and the boxes shown on it (ids and boxes), so the same batch
    output pushed again matches its tasks, and another batch (or a re-snapped one) of the same
    images gets tasks of its own."""
    digest = hashlib.sha1(json.dumps([[a["id"], a.get("bbox")] for a in sorted(anns, key=lambda a: a["id"])],
                                     default=str).encode()).hexdigest()[:12]
    return f"{image['id']}:{image['file_name']}:{digest}"


def region_id(annotation_id: int) -> str:
    return f"{REGION_PREFIX}{annotation_id}"


def annotation_of_region(rid: Any) -> int | None:
    s = str(rid or "")
    if s.startswith(REGION_PREFIX) and s[len(REGION_PREFIX):].lstrip("-").isdigit():
        return int(s[len(REGION_PREFIX):])
    return None


def finite_box(b: Any) -> list[float] | None:
    """A COCO bbox as 4 finite floats with positive size, else None."""
    if not isinstance(b, list) or len(b) != 4:
        return None
    try:
        v = [float(x) for x in b]
    except (TypeError, ValueError):
        return None
    return v if all(map(math.isfinite, v)) and v[2] > 0 and v[3] > 0 else None
