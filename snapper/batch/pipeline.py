"""Batch snapping in one process: plan, snap every chunk (reusing finished ones), merge.
``flows/batch_snap.py`` runs the same three steps as Prefect tasks fanned out over workers."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapper.batch.chunk import snap_chunk
from snapper.batch.merge import merge_chunks
from snapper.batch.rough import plan_chunks
from snapper.batch.schema import BOXES_PARQUET, OUTPUT_JSON, REVIEW_CSV, SUMMARY_JSON
from snapper.config import BatchConfig
from snapper.registry import resolve_model

DEFAULT_MODEL = "models:/snapper/latest"


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


def run_extra(model_ref: str | os.PathLike[str], checkpoint: str | os.PathLike[str], n_chunks: int,
              n_boxes: int, seconds: float) -> dict[str, Any]:
    """What a run adds to ``summary.json``: the model and the throughput."""
    return {"model": str(model_ref), "checkpoint": str(checkpoint), "n_chunks": n_chunks,
            "snap_seconds": round(seconds, 3), "annotations_per_s": round(n_boxes / seconds, 2) if seconds > 0 else None}


def batch_snap(
    ann_file: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_ref: str | os.PathLike[str] = DEFAULT_MODEL,
    cfg: BatchConfig | None = None,
    truth: str | os.PathLike[str] | None = None,
) -> BatchResult:
    """Plan, snap every chunk (reusing finished ones) and merge, all in this process. The
    model reference is resolved once, so every chunk uses the same weights."""
    cfg = cfg or BatchConfig()
    t0 = time.perf_counter()
    chunks = plan_chunks(ann_file, images_dir, cfg.chunk_images)
    checkpoint = resolve_model(model_ref)
    results = [snap_chunk(c, checkpoint, out_dir, cfg) for c in chunks]
    t_snap = time.perf_counter() - t0
    extra = run_extra(model_ref, checkpoint, len(chunks), sum(c.n_annotations for c in chunks), t_snap)
    merge_chunks(ann_file, results, out_dir, cfg, truth=truth, extra=extra)
    return result_for(out_dir)
