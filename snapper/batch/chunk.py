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

import dataclasses
import functools
import hashlib
import json
import logging
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
from snapper.config import BatchConfig, SnapSettings
from snapper.data.shards import sha256_file
from snapper.device import resolve_device
from snapper.inference.snap import Snapper
from snapper.models.checkpoint import CONFIG_FILE, MODEL_FILE

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


# Loaded models kept per process. Chunks of one job share one (threads of a flow run, or one
# in-process job); a long-lived worker that serves several jobs keeps the last few instead of
# every model and setting it ever saw.
MODEL_CACHE_SIZE = 2
_SNAPPERS_LOCK = threading.Lock()


@functools.lru_cache(maxsize=MODEL_CACHE_SIZE)
def _load_snapper(path: str, weights: str, settings: SnapSettings) -> Snapper:
    return Snapper.from_checkpoint(path, settings)


def get_snapper(ckpt: str | os.PathLike[str], settings: SnapSettings) -> Snapper:
    """One loaded model per (checkpoint folder, weights' hash, settings with the device resolved)
    per process, the last :data:`MODEL_CACHE_SIZE` of them: chunks run in threads share it
    (inference in eval mode does not mutate the module)."""
    resolved = dataclasses.replace(settings, device=str(resolve_device(settings.device)))
    with _SNAPPERS_LOCK:  # one load per key even when chunks start together
        return _load_snapper(str(Path(ckpt).resolve()), model_fingerprint(ckpt), resolved)


def chunk_result_path(chunk: Chunk, out_dir: str | os.PathLike[str], model_fp: str, cfg: BatchConfig,
                      images_fp: str) -> Path:
    """Where a chunk's result lives; the name changes with anything that changes the result
    (input file, images folder, image ids, the images' contents as ``images_fp``, weights,
    buffer ratio, size limit, decode scale, precision, pixel budget, passes, flip, the broken-box
    guard)."""
    snap = cfg.snap
    key = [chunk.key, images_fp, model_fp, snap.buffer_ratio, cfg.min_box_size, cfg.draft_decode, snap.precision,
           cfg.max_pixels]
    if snap.passes != 1 or snap.flip:  # plain results keep the names they had before these options existed
        key += [snap.passes, bool(snap.flip)]
    key += [["guard", snap.max_edge_move] if snap.guard else "no-guard"]  # results before the guard: snapped again
    h = hashlib.sha256(json.dumps(key).encode())
    return Path(out_dir) / CHUNKS_DIR / f"chunk-{chunk.index:05d}-{h.hexdigest()[:12]}.parquet"


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
    jobs, kept = chunk_jobs(inp, chunk, cfg.follow_links)
    snapper = get_snapper(ckpt, cfg.snap)  # a one-pass model asked for two is refused here, naming it
    batcher = Batcher(snapper)
    batcher.rows += kept
    for item in iter_image_crops(jobs, snapper.cfg.input_size, snapper.cfg.context, cfg):
        batcher.add(item)
    return rows_frame(batcher.finish())


def run_chunk(
    chunk: "Chunk | dict[str, Any]",
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: BatchConfig | None = None,
) -> ChunkOutcome:
    """Snap one chunk and write its per-annotation rows atomically, or reuse the result of an
    earlier run with the same input, images (by content), weights and settings. ``checkpoint``
    is a checkpoint folder: a job resolves its model reference once, before its chunks fan out
    (:func:`snapper.models.reference.resolve_model`), so that every chunk uses the same weights."""
    chunk = Chunk.from_dict(chunk)
    cfg = cfg or BatchConfig()
    ckpt = Path(checkpoint)
    inp = load_rough(chunk.ann_file)
    if inp.sha256 != chunk.input_sha256:
        raise BatchInputError(f"{chunk.ann_file}: the file changed since the chunks were planned; plan again")
    expected = sum(len(inp.anns_by_image[i]) for i in chunk.image_ids)
    images = images_fingerprint(inp, chunk, out_dir, cfg.follow_links)
    out = chunk_result_path(chunk, out_dir, model_fingerprint(ckpt), cfg, images)
    if usable_result(out, expected):
        return ChunkOutcome(out, True, expected)
    df = _snap_rows(inp, chunk, ckpt, cfg)
    if len(df) != expected or df["annotation_id"].duplicated().any():
        raise AccountingError(f"{chunk.ann_file}: chunk {chunk.index} produced {len(df)} rows for {expected} annotations")
    atomic_write_parquet(df, out)
    return ChunkOutcome(out, False, expected)


def snap_chunk(
    chunk: "Chunk | dict[str, Any]",
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: BatchConfig | None = None,
) -> Path:
    """:func:`run_chunk`, returning only the result path."""
    return run_chunk(chunk, checkpoint, out_dir, cfg).path
