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

A batch job is planned once, here, for ``snapper batch-snap`` and the ``batch-snap`` flow
alike: :func:`plan_batch` (format, options, folders, input read or converted, model resolved:
one :class:`FileJob` per rough COCO file with its output folder), then per job
:func:`snap_job` in this process, or the flow's chunk tasks and :func:`finish_job` (merge,
write back).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from snapper.atomic import atomic_write_json
from snapper.batch.pipeline import BatchResult, check_folders, merge_file, snap_file
from snapper.batch.rough import input_files
from snapper.batch.schema import BatchInputError
from snapper.config import BatchConfig
from snapper.formats import cvat, groundtruth, voc, yolo
from snapper.formats.common import FormatError, Sidecar
from snapper.formats.detect import FORMATS, detect_format
from snapper.models.reference import DEFAULT_MODEL, resolve_model

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


@dataclass(frozen=True)
class FileJob:
    """One rough COCO file of a planned job and the folder its outputs go to; ``label``: the
    input as the user named it (the file, or the converted input's source)."""

    rough: str
    out_dir: str
    label: str

    @property
    def name(self) -> str:
        return Path(self.label).stem


@dataclass
class BatchPlan:
    """A batch job checked and prepared before any snapping (:func:`plan_batch`): the input's
    format, the model resolved once (every chunk of every file uses the same weights), one
    :class:`FileJob` per rough COCO file, and for a converted input what ``format.json`` records."""

    source: str
    format: str
    images_dir: str
    out_dir: str
    model: str
    checkpoint: str
    jobs: list[FileJob]
    truth: str | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON, for a flow's tasks."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BatchPlan":
        return cls(**{**data, "jobs": [FileJob(**j) for j in data["jobs"]]})


def plan_batch(
    source: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_ref: str | os.PathLike[str] = DEFAULT_MODEL,
    cfg: BatchConfig | None = None,
    fmt: str = "auto",
    label_attribute: str | None = None,
    truth: str | os.PathLike[str] | None = None,
) -> BatchPlan:
    """Plan a batch job (``snapper batch-snap`` and the ``batch-snap`` flow both run this): the
    format detected, options that do not fit it refused, the folders checked, the input read
    (a COCO file, a folder of them each into ``OUT_DIR/<stem>/``, or any other format converted
    to ``OUT_DIR/input.coco.json``), the model resolved, and only then anything written."""
    cfg = cfg or BatchConfig()
    fmt = resolve_format(source, fmt)
    if label_attribute is not None and fmt != "groundtruth":
        raise FormatError(f"--label-attribute is for Ground Truth manifests, not {fmt}")
    src, out = Path(source), Path(out_dir)
    converted: tuple[dict[str, Any], Sidecar] | None = None
    if fmt == "coco":
        folder = src.is_dir()
        jobs = [FileJob(str(f), str(out / f.stem if folder else out), str(f)) for f in input_files(src)]
        if truth is not None and folder:
            raise BatchInputError("--truth needs a single rough file, not a folder")
        check_folders(images_dir, out)
    else:
        check_folders(images_dir, out)
        converted = read_any(src, images_dir, fmt, label_attribute, cfg.fuse_key or "object_id")
        jobs = [FileJob(str(out / INPUT_COCO), str(out), str(src))]
    checkpoint = resolve_model(model_ref)  # once: the weights every chunk of every file uses
    plan = BatchPlan(str(src), fmt, str(images_dir), str(out), str(model_ref), str(checkpoint), jobs,
                     None if truth is None else str(truth))
    if converted is not None:
        coco, sidecar = converted
        save_input(coco, sidecar, out)
        plan.report = {"format": fmt, "input": str(src), "coco_input": jobs[0].rough,
                       "n_boxes": len(coco["annotations"]), **agreement_report(sidecar)}
        if sidecar.extra.get("unreadable"):  # files of a folder that could not be read: reported, not snapped
            plan.report["unreadable"] = sidecar.extra["unreadable"]
        if fmt == "groundtruth":
            plan.report["label_attribute"] = sidecar.extra["label_attribute"]
    return plan


def write_back(plan: BatchPlan, job: FileJob, result: BatchResult) -> FormatResult:
    """A converted input's snapped COCO result written back in its format under
    ``OUT_DIR/snapped/``, and what was read and written in ``OUT_DIR/format.json``."""
    if plan.format == "coco":
        return FormatResult("coco", result)
    out = Path(job.out_dir)
    sidecar = Sidecar.from_json(json.loads((out / INPUT_SIDECAR).read_text()))
    written = write_any(json.loads(result.annotations.read_text()), sidecar, out / SNAPPED_DIR)
    report = {**plan.report, "written": [str(p) for p in written]}
    atomic_write_json(out / FORMAT_JSON, report, indent=2)
    return FormatResult(plan.format, result, written, Path(job.rough), report)


def snap_job(plan: BatchPlan, job: FileJob, cfg: BatchConfig) -> FormatResult:
    """One file of a plan, in this process: its chunks (finished ones reused), merged, written back."""
    return write_back(plan, job, snap_file(job.rough, plan.images_dir, job.out_dir, plan.checkpoint, cfg,
                                           plan.truth, plan.model))


def finish_job(plan: BatchPlan, job: FileJob, outcomes: list[dict[str, Any]], cfg: BatchConfig,
               seconds: float) -> FormatResult:
    """One file of a plan whose chunks ran elsewhere (a flow's tasks): merged, written back."""
    result = merge_file(job.rough, job.out_dir, outcomes, cfg, plan.model, plan.checkpoint, seconds, plan.truth)
    return write_back(plan, job, result)


def batch_snap_any(path: str | os.PathLike[str], images_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                   model_ref: str | os.PathLike[str] = DEFAULT_MODEL, cfg: BatchConfig | None = None,
                   **options: Any) -> FormatResult:
    """Snap every box of one input in any supported format (a COCO file, or a file or folder of
    another format), in this process; other formats are also written back under
    ``OUT_DIR/snapped/``. ``options``: :func:`plan_batch`'s (``fmt``, ``label_attribute``, ``truth``)."""
    cfg = cfg or BatchConfig()
    plan = plan_batch(path, images_dir, out_dir, model_ref, cfg, **options)
    if len(plan.jobs) != 1:
        raise BatchInputError(f"{path}: a folder of {len(plan.jobs)} COCO files; snap each (snapper batch-snap "
                              "writes each to OUT_DIR/<stem>/)")
    return snap_job(plan, plan.jobs[0], cfg)
