"""Snapping one chunk: the model (loaded once per process, shared by chunks in threads), the
chunk's result file and the work that fills it.

A chunk's result is named by everything that changes it (input, images, weights, settings)
and written atomically, so a result that exists is complete and current: that is how a
killed run resumes without recomputing finished chunks, and why other weights never reuse
a stale result.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

from snapper.atomic import atomic_write_parquet
from snapper.batch.batcher import Batcher
from snapper.batch.crops import chunk_jobs, iter_image_crops
from snapper.batch.rough import Chunk, load_rough
from snapper.batch.schema import CHUNKS_DIR, AccountingError, BatchInputError, rows_frame
from snapper.checkpoint import CONFIG_FILE, MODEL_FILE
from snapper.config import BatchConfig
from snapper.data.shards import sha256_file
from snapper.device import check_precision, resolve_device
from snapper.registry import resolve_model
from snapper.snap import Snapper


@functools.lru_cache(maxsize=8)
def _model_fingerprint(path: str, mtime_ns: int, size: int) -> str:
    p = Path(path)
    return hashlib.sha256((sha256_file(p / MODEL_FILE) + sha256_file(p / CONFIG_FILE)).encode()).hexdigest()[:12]


def model_fingerprint(ckpt: str | os.PathLike[str]) -> str:
    """Content hash of a checkpoint: a chunk result is reused only for the same weights."""
    p = Path(ckpt).resolve()
    st = (p / MODEL_FILE).stat()
    return _model_fingerprint(str(p), st.st_mtime_ns, st.st_size)


_SNAPPERS: dict[tuple[str, str, str, int, str], Snapper] = {}
_SNAPPERS_LOCK = threading.Lock()


def get_snapper(ckpt: str | os.PathLike[str], device: str = "auto", batch_size: int = 128,
                precision: str = "auto") -> Snapper:
    """One loaded model per (checkpoint, device, precision) per process: chunks run in threads
    share it (inference in eval mode does not mutate the module)."""
    dev = str(resolve_device(device))
    key = (str(Path(ckpt).resolve()), dev, model_fingerprint(ckpt), int(batch_size), precision)
    with _SNAPPERS_LOCK:
        s = _SNAPPERS.get(key)
        if s is None:
            s = _SNAPPERS[key] = Snapper.from_checkpoint(ckpt, device=dev, batch_size=batch_size, precision=precision)
    return s


def chunk_result_path(chunk: Chunk, out_dir: str | os.PathLike[str], model_fp: str, cfg: BatchConfig) -> Path:
    """Where a chunk's result lives; the name changes with anything that changes the result
    (input file, images folder, images, weights, buffer ratio, size limit, decode scale)."""
    h = hashlib.sha256(json.dumps([chunk.key, model_fp, cfg.buffer_ratio, cfg.min_box_size, cfg.draft_decode,
                                  cfg.precision]).encode())
    return Path(out_dir) / CHUNKS_DIR / f"chunk-{chunk.index:05d}-{h.hexdigest()[:12]}.parquet"


def check_config(cfg: BatchConfig) -> None:
    """Settings that would otherwise fail every box (as ``image_corrupt``) or mid-run."""
    if not (math.isfinite(cfg.buffer_ratio) and cfg.buffer_ratio > 0):
        raise ValueError(f"buffer_ratio must be a positive number, got {cfg.buffer_ratio!r}")
    if int(cfg.batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size!r}")
    if int(cfg.chunk_images) < 1:
        raise ValueError(f"chunk_images must be >= 1, got {cfg.chunk_images!r}")
    check_precision(cfg.precision)


def snap_chunk(
    chunk: "Chunk | dict[str, Any]",
    model_ref: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: BatchConfig | None = None,
) -> Path:
    """Snap one chunk and write its per-annotation rows atomically; returns the result path.

    A result that already exists (same input, images, weights and settings) is reused.
    """
    chunk = Chunk.from_dict(chunk)
    cfg = cfg or BatchConfig()
    check_config(cfg)
    ckpt = resolve_model(model_ref)
    out = chunk_result_path(chunk, out_dir, model_fingerprint(ckpt), cfg)
    if out.is_file():
        return out
    inp = load_rough(chunk.ann_file)
    if inp.sha256 != chunk.input_sha256:
        raise BatchInputError(f"{chunk.ann_file}: the file changed since the chunks were planned; plan again")
    jobs, kept = chunk_jobs(inp, chunk)
    snapper = get_snapper(ckpt, cfg.device, cfg.batch_size, cfg.precision)
    batcher = Batcher(snapper, cfg.batch_size)
    batcher.rows += kept
    for item in iter_image_crops(jobs, snapper.cfg.input_size, snapper.cfg.context, cfg):
        batcher.add(item)
    df = rows_frame(batcher.finish())
    expected = sum(len(inp.anns_by_image[i]) for i in chunk.image_ids)
    if len(df) != expected or df["annotation_id"].duplicated().any():
        raise AccountingError(f"{chunk.ann_file}: chunk {chunk.index} produced {len(df)} rows for {expected} annotations")
    atomic_write_parquet(df, out)
    return out
