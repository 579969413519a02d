"""Snapping one chunk: the model (loaded once per process, shared by chunks in threads), the
chunk's result file and the work that fills it.

A chunk's result is named by everything that changes it: the input file, the images folder,
each image's content (:mod:`snapper.batch.identity`), the weights and the settings that
change boxes. It is written atomically, so a result that exists is complete and current:
that is how a killed run resumes without recomputing finished chunks, and why a replaced
image or other weights never reuse a stale result. A result file that cannot be read back
(empty, truncated, not this schema) counts as missing and is snapped again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from snapper.atomic import atomic_write_parquet
from snapper.batch.batcher import Batcher
from snapper.batch.identity import images_fingerprint
from snapper.batch.image_work import chunk_jobs, iter_image_crops
from snapper.batch.rough import Chunk, RoughInput, load_rough
from snapper.batch.schema import (
    CHUNKS_DIR,
    ROW_COLUMNS,
    AccountingError,
    BatchInputError,
    rows_frame,
)
from snapper.config import BatchConfig
from snapper.data.shards import sha256_file
from snapper.device import check_precision, resolve_device
from snapper.inference.snap import Snapper
from snapper.models.checkpoint import CONFIG_FILE, MODEL_FILE
from snapper.models.reference import resolve_model
from snapper.zoom import check_passes

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def _model_fingerprint(path: str, mtime_ns: int, size: int) -> str:
    p = Path(path)
    return hashlib.sha256((sha256_file(p / MODEL_FILE) + sha256_file(p / CONFIG_FILE)).encode()).hexdigest()[:12]


def model_fingerprint(ckpt: str | os.PathLike[str]) -> str:
    """Content hash of a checkpoint: a chunk result is reused only for the same weights."""
    p = Path(ckpt).resolve()
    st = (p / MODEL_FILE).stat()
    return _model_fingerprint(str(p), st.st_mtime_ns, st.st_size)


_SNAPPERS: dict[tuple[str, str, str, int, str, bool, bool], Snapper] = {}
_SNAPPERS_LOCK = threading.Lock()


def get_snapper(ckpt: str | os.PathLike[str], device: str = "auto", batch_size: int = 128,
                precision: str = "auto", flip: bool = False, channels_last: bool = True) -> Snapper:
    """One loaded model per (checkpoint, device, settings) per process: chunks run in threads
    share it (inference in eval mode does not mutate the module)."""
    dev = str(resolve_device(device))
    key = (str(Path(ckpt).resolve()), dev, model_fingerprint(ckpt), int(batch_size), precision, bool(flip),
           bool(channels_last))
    with _SNAPPERS_LOCK:
        s = _SNAPPERS.get(key)
        if s is None:
            s = _SNAPPERS[key] = Snapper.from_checkpoint(ckpt, device=dev, batch_size=batch_size, precision=precision,
                                                         flip=flip, channels_last=channels_last)
    return s


def chunk_result_path(chunk: Chunk, out_dir: str | os.PathLike[str], model_fp: str, cfg: BatchConfig,
                      images_fp: str) -> Path:
    """Where a chunk's result lives; the name changes with anything that changes the result
    (input file, images folder, image ids, the images' contents as ``images_fp``, weights,
    buffer ratio, size limit, decode scale, precision, pixel budget, passes, flip)."""
    key = [chunk.key, images_fp, model_fp, cfg.buffer_ratio, cfg.min_box_size, cfg.draft_decode, cfg.precision,
           cfg.max_pixels]
    if cfg.passes != 1 or cfg.flip:  # plain results keep the names they had before these options existed
        key += [cfg.passes, bool(cfg.flip)]
    h = hashlib.sha256(json.dumps(key).encode())
    return Path(out_dir) / CHUNKS_DIR / f"chunk-{chunk.index:05d}-{h.hexdigest()[:12]}.parquet"


def check_config(cfg: BatchConfig) -> None:
    """Settings that would otherwise fail every box (as ``image_corrupt``) or mid-run."""
    if not (math.isfinite(cfg.buffer_ratio) and cfg.buffer_ratio > 0):
        raise ValueError(f"buffer_ratio must be a positive number, got {cfg.buffer_ratio!r}")
    if int(cfg.batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size!r}")
    if int(cfg.chunk_images) < 1:
        raise ValueError(f"chunk_images must be >= 1, got {cfg.chunk_images!r}")
    if cfg.max_pixels is not None and int(cfg.max_pixels) < 1:
        raise ValueError(f"max_pixels must be >= 1 (or null for no budget), got {cfg.max_pixels!r}")
    check_precision(cfg.precision)
    if cfg.passes not in (1, 2):
        raise ValueError(f"passes must be 1 or 2, got {cfg.passes!r}")


@dataclass(frozen=True)
class ChunkOutcome:
    """A chunk's result file and whether this call snapped it or found it done."""

    path: Path
    reused: bool
    n_annotations: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "reused": self.reused, "n_annotations": self.n_annotations}


def usable_result(path: Path, expected: int) -> bool:
    """Whether ``path`` is a complete result of ``expected`` rows; anything else (absent,
    empty, truncated, another schema) is snapped again instead of blocking every re-run."""
    if not path.is_file():
        return False
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as e:
        log.warning("%s: unreadable chunk result, snapping the chunk again (%s)", path, e)
        return False
    if list(df.columns) != ROW_COLUMNS or len(df) != expected or df["annotation_id"].duplicated().any():
        log.warning("%s: incomplete chunk result (%d rows for %d annotations), snapping again", path, len(df), expected)
        return False
    return True


def _snap_rows(inp: RoughInput, chunk: Chunk, ckpt: Path, cfg: BatchConfig) -> pd.DataFrame:
    jobs, kept = chunk_jobs(inp, chunk)
    snapper = get_snapper(ckpt, cfg.device, cfg.batch_size, cfg.precision, cfg.flip, cfg.channels_last)
    check_passes(snapper.cfg, cfg.passes, str(ckpt))
    batcher = Batcher(snapper, cfg.batch_size, cfg.passes)
    batcher.rows += kept
    for item in iter_image_crops(jobs, snapper.cfg.input_size, snapper.cfg.context, cfg):
        batcher.add(item)
    return rows_frame(batcher.finish())


def run_chunk(
    chunk: "Chunk | dict[str, Any]",
    model_ref: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: BatchConfig | None = None,
) -> ChunkOutcome:
    """Snap one chunk and write its per-annotation rows atomically, or reuse the result of an
    earlier run with the same input, images (by content), weights and settings."""
    chunk = Chunk.from_dict(chunk)
    cfg = cfg or BatchConfig()
    check_config(cfg)
    ckpt = resolve_model(model_ref)
    inp = load_rough(chunk.ann_file)
    if inp.sha256 != chunk.input_sha256:
        raise BatchInputError(f"{chunk.ann_file}: the file changed since the chunks were planned; plan again")
    expected = sum(len(inp.anns_by_image[i]) for i in chunk.image_ids)
    out = chunk_result_path(chunk, out_dir, model_fingerprint(ckpt), cfg, images_fingerprint(inp, chunk, out_dir))
    if usable_result(out, expected):
        return ChunkOutcome(out, True, expected)
    df = _snap_rows(inp, chunk, ckpt, cfg)
    if len(df) != expected or df["annotation_id"].duplicated().any():
        raise AccountingError(f"{chunk.ann_file}: chunk {chunk.index} produced {len(df)} rows for {expected} annotations")
    atomic_write_parquet(df, out)
    return ChunkOutcome(out, False, expected)


def snap_chunk(
    chunk: "Chunk | dict[str, Any]",
    model_ref: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: BatchConfig | None = None,
) -> Path:
    """:func:`run_chunk`, returning only the result path."""
    return run_chunk(chunk, model_ref, out_dir, cfg).path
