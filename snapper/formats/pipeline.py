"""Batch snapping of any supported format: convert to COCO, snap with the COCO batch path,
write the result back in the input's format.

The COCO batch path (:func:`snapper.batch.batch_snap`) is where the accounting guarantees
live (every input box comes out exactly once with a status, resume by content, fused boxes
per object), so other formats are not snapped separately: they are converted to
``OUT_DIR/input.coco.json`` (written only when its content changes, so a re-run resumes
from the finished chunks), snapped like any COCO file into ``OUT_DIR`` (``snapped.json``,
``boxes.parquet``, ``summary.json``, ``review.csv``), and written back under
``OUT_DIR/snapped/`` in the input's format. ``OUT_DIR/input.sidecar.json`` records where
each annotation id came from, ``OUT_DIR/format.json`` what was read and written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from snapper.atomic import atomic_write_json
from snapper.batch.pipeline import BatchResult, batch_snap, check_folders
from snapper.config import BatchConfig
from snapper.formats import cvat, groundtruth, voc, yolo
from snapper.formats.common import FormatError, Sidecar
from snapper.formats.detect import FORMATS, detect_format
from snapper.models.reference import DEFAULT_MODEL

MODULES: dict[str, ModuleType] = {"voc": voc, "yolo": yolo, "cvat": cvat, "groundtruth": groundtruth}
FORMAT_CHOICES = ("auto", *FORMATS)
INPUT_COCO = "input.coco.json"
INPUT_SIDECAR = "input.sidecar.json"
SNAPPED_DIR = "snapped"
FORMAT_JSON = "format.json"


@dataclass
class FormatResult:
    """A finished run: the input's format, the COCO batch result, the files written back."""

    format: str
    batch: BatchResult
    written: list[Path] = field(default_factory=list)
    coco_input: Path | None = None
    report: dict[str, Any] = field(default_factory=dict)


def resolve_format(path: str | os.PathLike[str], fmt: str = "auto") -> str:
    if fmt not in FORMAT_CHOICES:
        raise FormatError(f"unknown format {fmt!r}; one of {', '.join(FORMAT_CHOICES)}")
    return detect_format(path) if fmt == "auto" else fmt


def read_any(path: str | os.PathLike[str], images_dir: str | os.PathLike[str], fmt: str = "auto",
             label_attribute: str | None = None, fuse_key: str = "object_id") -> tuple[dict[str, Any], Sidecar]:
    """Any non-COCO input -> (rough COCO dict, sidecar)."""
    fmt = resolve_format(path, fmt)
    if fmt == "coco":
        raise FormatError(f"{path}: is COCO already; snap it with snapper.batch.batch_snap")
    if label_attribute is not None and fmt != "groundtruth":
        raise FormatError(f"--label-attribute is for Ground Truth manifests, not {fmt}")
    return MODULES[fmt].read(Path(path), Path(images_dir), label_attribute=label_attribute, fuse_key=fuse_key)


def write_any(coco: dict[str, Any], sidecar: Sidecar, out_dir: str | os.PathLike[str],
              fmt: str | None = None) -> list[Path]:
    """The (snapped) COCO dict written in ``fmt`` (default: the sidecar's format)."""
    return MODULES[fmt or sidecar.format].write(coco, sidecar, Path(out_dir))


def save_input(coco: dict[str, Any], sidecar: Sidecar, out_dir: Path) -> Path:
    """``input.coco.json`` and its sidecar, rewritten only when the content changes (same
    bytes, same input hash: the batch path reuses the finished chunks)."""
    path = out_dir / INPUT_COCO
    text = json.dumps(coco, indent=None)
    if not (path.is_file() and path.read_text() == text):
        atomic_write_json(path, coco, indent=None)
    atomic_write_json(out_dir / INPUT_SIDECAR, sidecar.to_json(), indent=None)
    return path


def agreement_report(sidecar: Sidecar) -> dict[str, Any]:
    """How much the workers agreed, over the consolidated objects."""
    objects = sidecar.extra.get("objects") or {}
    values = [o["agreement_iou"] for o in objects.values() if o.get("agreement_iou") is not None]
    return {"n_objects": len(objects),
            "agreement_iou": ({"n": len(values), "mean": round(sum(values) / len(values), 4), "min": min(values),
                               "n_below_0.5": sum(v < 0.5 for v in values)} if values else {"n": 0})}


def batch_snap_any(
    path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_ref: str | os.PathLike[str] = DEFAULT_MODEL,
    cfg: BatchConfig | None = None,
    fmt: str = "auto",
    label_attribute: str | None = None,
    truth: str | os.PathLike[str] | None = None,
) -> FormatResult:
    """Snap every box of an input in any supported format (one COCO file as before), and write
    the result back in that format under ``OUT_DIR/snapped/``."""
    cfg = cfg or BatchConfig()
    fmt = resolve_format(path, fmt)
    check_folders(images_dir, out_dir)
    if fmt == "coco":
        if label_attribute is not None:
            raise FormatError("--label-attribute is for Ground Truth manifests, not coco")
        return FormatResult("coco", batch_snap(path, images_dir, out_dir, model_ref, cfg, truth=truth))
    coco, sidecar = read_any(path, images_dir, fmt, label_attribute, cfg.fuse_key or "object_id")
    out = Path(out_dir)
    coco_path = save_input(coco, sidecar, out)
    result = batch_snap(coco_path, images_dir, out, model_ref, cfg, truth=truth)
    snapped = json.loads(result.annotations.read_text())
    written = write_any(snapped, sidecar, out / SNAPPED_DIR)
    report = {"format": fmt, "input": str(path), "coco_input": str(coco_path), "n_boxes": len(coco["annotations"]),
              "written": [str(p) for p in written], **agreement_report(sidecar)}
    if fmt == "groundtruth":
        report["label_attribute"] = sidecar.extra["label_attribute"]
    atomic_write_json(out / FORMAT_JSON, report, indent=2)
    return FormatResult(fmt, result, written, coco_path, report)
