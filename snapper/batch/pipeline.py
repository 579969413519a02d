"""Batch snapping in one process: plan, snap every chunk (reusing finished ones), merge.
``flows/batch_snap.py`` runs the same three steps as Prefect tasks fanned out over workers."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapper.batch.chunk import ChunkOutcome, run_chunk
from snapper.batch.merge import merge_chunks
from snapper.batch.rough import plan_chunks
from snapper.batch.schema import (
    BOXES_PARQUET,
    OUTPUT_JSON,
    REVIEW_CSV,
    SUMMARY_JSON,
    BatchInputError,
)
from snapper.config import BatchConfig
from snapper.models.checkpoint import read_config
from snapper.models.reference import DEFAULT_MODEL, resolve_model


@dataclass
class BatchResult:
    out_dir: Path
    annotations: Path  # snapped.json
    boxes: Path  # boxes.parquet
    summary_path: Path
    review: Path
    summary: dict[str, Any] = field(default_factory=dict)


def result_for(out_dir: str | os.PathLike[str]) -> BatchResult:
    """The outputs of a finished run in ``out_dir`` (summary read back)."""
    d = Path(out_dir)
    return BatchResult(d, d / OUTPUT_JSON, d / BOXES_PARQUET, d / SUMMARY_JSON, d / REVIEW_CSV,
                       json.loads((d / SUMMARY_JSON).read_text()))


def run_extra(model_ref: str | os.PathLike[str], checkpoint: str | os.PathLike[str],
              outcomes: list[ChunkOutcome] | list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """What a run adds to ``summary.json``: the model, whether its confidence is calibrated
    (``snapper calibrate``: only then is an expected count of wrong edges a count), the chunks
    snapped now and reused from an earlier run, and the throughput of this run
    (``annotations_per_s`` counts only the annotations snapped now: a resumed run does not claim
    the reused chunks' work)."""
    done = _outcome_dicts(outcomes)
    fresh = sum(o["n_annotations"] for o in done if not o["reused"])
    return {"model": str(model_ref), "checkpoint": str(checkpoint),
            "calibrated": read_config(checkpoint)[0].calibration is not None, "n_chunks": len(done),
            "n_chunks_reused": sum(bool(o["reused"]) for o in done), "n_annotations_snapped_now": fresh,
            "snap_seconds": round(seconds, 3),
            "annotations_per_s": round(fresh / seconds, 2) if seconds > 0 and fresh else None}


def _outcome_dicts(outcomes: list[ChunkOutcome] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o.to_dict() if isinstance(o, ChunkOutcome) else o for o in outcomes]


def check_folders(images_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> None:
    """A misspelled images folder would keep every box as ``image_missing``, an output path
    that is a file would fail after the work: both are refused first, naming the path."""
    if not Path(images_dir).is_dir():
        raise BatchInputError(f"images folder {images_dir} does not exist (or is not a folder)")
    out = Path(out_dir)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise BatchInputError(f"output folder {out_dir}: {p} is a file, not a folder")
            break


def merge_file(ann_file: str | os.PathLike[str], out_dir: str | os.PathLike[str],
               outcomes: list[ChunkOutcome] | list[dict[str, Any]], cfg: BatchConfig, model_ref: str | os.PathLike[str],
               checkpoint: str | os.PathLike[str], seconds: float,
               truth: str | os.PathLike[str] | None = None) -> BatchResult:
    """A file's chunk results (this process's or a flow's tasks') merged into its outputs."""
    done = _outcome_dicts(outcomes)
    merge_chunks(ann_file, [o["path"] for o in done], out_dir, cfg, truth=truth,
                 extra=run_extra(model_ref, checkpoint, done, seconds))
    return result_for(out_dir)


def snap_file(ann_file: str | os.PathLike[str], images_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
              checkpoint: str | os.PathLike[str], cfg: BatchConfig, truth: str | os.PathLike[str] | None = None,
              model_ref: str | os.PathLike[str] | None = None) -> BatchResult:
    """One rough COCO file of a checked job (folders checked, the model resolved to
    ``checkpoint``): plan, snap every chunk (reusing finished ones) and merge, in this process."""
    t0 = time.perf_counter()
    chunks = plan_chunks(ann_file, images_dir, cfg.chunk_images)
    outcomes = [run_chunk(c, checkpoint, out_dir, cfg) for c in chunks]
    return merge_file(ann_file, out_dir, outcomes, cfg, model_ref or checkpoint, checkpoint,
                      time.perf_counter() - t0, truth)


def batch_snap(ann_file: str | os.PathLike[str], images_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
               model_ref: str | os.PathLike[str] = DEFAULT_MODEL, cfg: BatchConfig | None = None,
               truth: str | os.PathLike[str] | None = None) -> BatchResult:
    """One rough COCO file in this process: the folders checked and the model reference
    resolved once (every chunk uses the same weights), then :func:`snap_file`. Other formats,
    folders of files: :func:`snapper.formats.pipeline.plan_batch`."""
    cfg = cfg or BatchConfig()
    check_folders(images_dir, out_dir)
    return snap_file(ann_file, images_dir, out_dir, resolve_model(model_ref), cfg, truth, model_ref)
