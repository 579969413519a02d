"""The inbox claim protocol: several runs (scheduled, overlapping, killed) share one inbox
folder and every file is snapped once.

Layout::

    <inbox>/*.json              new rough-annotation files (write elsewhere, then move in;
                                also *.manifest / *.jsonl Ground Truth manifests, *.xml CVAT,
                                *.zip a zipped Pascal VOC or YOLO folder (or one file of the
                                others); files younger than ``min_age_s`` are left for the
                                next run)
    <inbox>/processing/         claimed files: ``<stem>.<claim id>-<attempt>.json``
    <inbox>/done/<name>.json    inputs snapped successfully
    <inbox>/failed/<name>.json  inputs that could not be snapped, with ``<stem>.error.txt``
    <outbox>/<stem>/            outputs (``snapped.json``, ``boxes.parquet``, ...; a zip's
                                content is unpacked to ``input/``, its format written back
                                under ``snapped/``), one folder per input: ``<stem>.2/``, ...
                                for another input of the same stem (``a.json`` and
                                ``a.zip``, or a changed ``a.json`` dropped again), marked
                                with the input's sha256 in ``.source.json`` so that a retry
                                of the same input reuses its folder; the stem made safe
                                (``...json`` cannot write into the inbox)

Why it is safe: a file is claimed with one ``os.rename`` into ``processing/`` (atomic within
a filesystem), so of two runs exactly one rename succeeds and the other sees the file gone.
A run keeps touching the claims it works on (:func:`heartbeat`); a claim untouched for
``stale_after_s`` was left by a killed run and the next run takes it over with one more
rename (attempt + 1), reusing its finished chunks. After ``max_attempts`` claims (a file
that kills every run that touches it) it goes to ``failed/`` with a report instead. A file
that fails goes to ``failed/`` and never blocks the others.

Plain library code (no Prefect): ``flows/batch_snap.py`` only wires it into tasks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapper.atomic import atomic_write_json, atomic_write_text
from snapper.batch import BatchInputError
from snapper.config import BatchConfig
from snapper.data.shards import sha256_file
from snapper.formats import batch_snap_any
from snapper.formats.archive import unpack
from snapper.formats.detect import detect_format

PROCESSING, DONE, FAILED = "processing", "done", "failed"
OUTBOX = "outbox"  # default outbox: <inbox>/outbox
ERROR_SUFFIX = ".error.txt"

# What a rough file may be: COCO or a Ground Truth manifest saved as .json, a manifest as
# .manifest/.jsonl, a CVAT XML (see snapper.formats; detected by content), a zip of a VOC or
# YOLO folder (folders cannot arrive by one atomic rename; see snapper.formats.archive)
SUFFIXES = (".json", ".manifest", ".jsonl", ".xml", ".zip")
_CLAIM_RE = re.compile(r"^(?P<stem>.+)\.(?P<claim>[0-9A-Za-z]+)-(?P<attempt>[0-9]+)"
                       r"(?P<suffix>\.(?:json|manifest|jsonl|xml|zip))$")
UNPACKED = "input"  # <outbox>/<stem>/input/: a zip's content
SOURCE_MARKER = ".source.json"  # <outbox>/<stem>/.source.json: which input the folder belongs to
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")

Claim = dict[str, Any]  # {"name": original file name, "claimed": path in processing/, "attempt": n}


def new_claim_id(seed: str | None = None) -> str:
    """A claim id for one run: letters and digits only (it is part of the claimed file's name),
    unique even when two runs share ``seed`` (e.g. a flow run id)."""
    base = "".join(c for c in (seed or "") if c.isalnum())[:8] or uuid.uuid4().hex[:8]
    return base + uuid.uuid4().hex[:4]


def claim_to(src: Path, dst: Path) -> bool:
    """Rename ``src`` to ``dst`` and stamp it with the claim time (rename keeps the old mtime,
    which would make a file that waited long in the inbox look abandoned at once). False when
    another run renamed it first: ``os.rename`` of one source by two processes, one wins."""
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        return False
    os.utime(dst)
    return True


def _rough_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES) if folder.is_dir() else []


def new_files(inbox: str | os.PathLike[str], min_age_s: float = 0.0) -> list[Path]:
    """The inbox's rough files (:data:`SUFFIXES`) old enough to claim, sorted."""
    now, out = time.time(), []
    for src in _rough_files(Path(inbox)):
        try:
            if src.is_file() and not (min_age_s > 0 and now - src.stat().st_mtime < min_age_s):
                out.append(src)
        except FileNotFoundError:
            continue
    return out


def claim_files(inbox: str | os.PathLike[str], claim_id: str, min_age_s: float = 0.0,
                limit: int | None = None) -> list[Claim]:
    """Atomically claim new rough files of ``inbox``: ``[{"name", "claimed", "attempt"}]``.
    The destination carries ``claim_id``, so it never overwrites a claim."""
    proc = Path(inbox) / PROCESSING
    proc.mkdir(parents=True, exist_ok=True)
    out: list[Claim] = []
    for src in new_files(inbox, min_age_s):
        dst = proc / f"{src.stem}.{claim_id}-1{src.suffix}"
        if not claim_to(src, dst):
            continue  # claimed by another run between listing and renaming
        out.append({"name": src.name, "claimed": str(dst), "attempt": 1})
        if limit is not None and len(out) >= limit:
            break
    return out


def stale_claims(inbox: str | os.PathLike[str], stale_after_s: float) -> list[Path]:
    """Claims in ``processing/`` that no run has touched for ``stale_after_s``."""
    proc, now = Path(inbox) / PROCESSING, time.time()
    out = []
    for p in _rough_files(proc):
        try:
            if now - p.stat().st_mtime > stale_after_s:
                out.append(p)
        except FileNotFoundError:
            continue
    return out


def has_work(inbox: str | os.PathLike[str], stale_after_s: float) -> bool:
    """New files or stale claims: whether a run has anything to do (else it need not even
    load the model)."""
    return any(p.is_file() for p in _rough_files(Path(inbox))) or bool(stale_claims(inbox, stale_after_s))


def parse_claim(p: Path) -> tuple[str, int]:
    """(original name, attempt) of a claimed file's name."""
    m = _CLAIM_RE.match(p.name)
    return (m["stem"] + m["suffix"], int(m["attempt"])) if m else (p.name.split(".")[0] + p.suffix, 1)


def free_path(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name.1``, ``name.2``... when an earlier file of that name is there."""
    folder.mkdir(parents=True, exist_ok=True)
    p, k = folder / name, 0
    while p.exists():
        k += 1
        p = folder / f"{Path(name).stem}.{k}{Path(name).suffix}"
    return p


def error_report_path(dest: Path) -> Path:
    """``failed/<stem>.error.txt`` beside a failed input."""
    return dest.with_name(dest.stem + ERROR_SUFFIX)


def _give_up(inbox: Path, p: Path, name: str, attempt: int) -> dict[str, Any] | None:
    dest = free_path(inbox / FAILED, name)
    if not claim_to(p, dest):
        return None  # another run gave up on it first
    atomic_write_text(error_report_path(dest),
                      f"{name}: abandoned after {attempt} attempt(s): every run that claimed it stopped "
                      f"without finishing (killed, out of memory?); last claim {p.name}\n")
    return {"file": name, "status": "failed", "input": str(dest), "error": f"abandoned after {attempt} attempt(s)"}


def reclaim_stale(inbox: str | os.PathLike[str], claim_id: str, stale_after_s: float,
                  max_attempts: int) -> tuple[list[Claim], list[dict[str, Any]]]:
    """Take over the claims of killed runs: ``(claims to process, files given up on)``.
    A file already claimed ``max_attempts`` times goes to ``failed/`` with a report."""
    inbox = Path(inbox)
    claims, abandoned = [], []
    for p in stale_claims(inbox, stale_after_s):
        name, attempt = parse_claim(p)
        if attempt >= max_attempts:
            gone = _give_up(inbox, p, name, attempt)
            if gone is not None:
                abandoned.append(gone)
            continue
        dst = p.with_name(f"{Path(name).stem}.{claim_id}-{attempt + 1}{Path(name).suffix}")
        if claim_to(p, dst):
            claims.append({"name": name, "claimed": str(dst), "attempt": attempt + 1})
    return claims, abandoned


@dataclass
class ClaimRound:
    """What one run claimed: taken over from stopped runs first, then new files."""

    claim_id: str
    retried: list[Claim] = field(default_factory=list)
    new: list[Claim] = field(default_factory=list)
    abandoned: list[dict[str, Any]] = field(default_factory=list)

    @property
    def claims(self) -> list[Claim]:
        return self.retried + self.new


def claim_round(inbox: str | os.PathLike[str], claim_id: str, min_age_s: float = 0.0, max_files: int | None = None,
                stale_after_s: float = 3600.0, max_attempts: int = 3) -> ClaimRound:
    """Take over stale claims (or give them up), then claim new files."""
    if stale_after_s <= 0 or max_attempts < 1:
        raise ValueError("stale_after_s must be > 0 and max_attempts >= 1")
    retried, abandoned = reclaim_stale(inbox, claim_id, stale_after_s, max_attempts)
    new = claim_files(inbox, claim_id, min_age_s=min_age_s, limit=max_files)
    return ClaimRound(claim_id, retried, new, abandoned)


@contextmanager
def heartbeat(path: Path, every_s: float) -> Iterator[None]:
    """Touch ``path`` every ``every_s`` while the block runs: a claim that stops being touched
    belongs to a run that is gone."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            try:
                os.utime(path)
            except OSError:
                return

    t = threading.Thread(target=beat, name=f"heartbeat {path.name}", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def heartbeat_interval(stale_after_s: float) -> float:
    """Often enough that a live claim never looks stale: a quarter of the limit, at most a minute."""
    return min(60.0, stale_after_s / 4)


def safe_stem(name: str) -> str:
    """A file name's stem usable as one folder name: no separators, no leading or trailing dots
    (``...json`` has the stem ``..``), never empty."""
    return _UNSAFE.sub("_", Path(name).stem).strip(".") or "file"


def _source_of(folder: Path) -> str | None:
    try:
        return json.loads((folder / SOURCE_MARKER).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


def output_folder(outbox: str | os.PathLike[str], name: str, claimed: Path) -> Path:
    """The claimed input's own output folder (module doc): reserved with an atomic ``mkdir``,
    so two runs never share one, and found again by the input's sha256 on a retry."""
    digest = sha256_file(claimed)
    base = safe_stem(name)
    for k in range(1, 100_000):
        out = Path(outbox) / (base if k == 1 else f"{base}.{k}")
        try:
            out.mkdir(parents=True)
        except FileExistsError:
            if _source_of(out) == digest:
                return out
            continue
        atomic_write_json(out / SOURCE_MARKER, {"name": name, "sha256": digest})
        return out
    raise BatchInputError(f"{name}: no free output folder under {outbox}")


def images_for(name: str, images_root: str | os.PathLike[str]) -> Path:
    """The sidecar-free convention: ``<images_root>/<stem>/`` if it exists, else the root."""
    root = Path(images_root)
    sub = root / safe_stem(name)
    return sub if sub.is_dir() else root


def _failed(claim: Claim, inbox: str | os.PathLike[str], e: Exception) -> dict[str, Any]:
    name, claimed = claim["name"], Path(claim["claimed"])
    dest = free_path(Path(inbox) / FAILED, name)
    atomic_write_text(error_report_path(dest),
                      f"{name}: {type(e).__name__}: {e}\n\nclaimed as {claimed}\n\n{traceback.format_exc()}")
    if claimed.exists():
        os.replace(claimed, dest)
    return {"file": name, "status": "failed", "annotations": None, "snapped": None, "kept": None,
            "needs_review": None, "out_dir": None, "input": str(dest), "error": f"{type(e).__name__}: {e}",
            "summary": None}


def rough_source(archive: Path, out: Path) -> Path:
    """What to snap in a claimed zip: unpacked to ``out/input/``, its only file if it holds
    one, else its folder (VOC or YOLO; several COCO files go into the inbox one by one)."""
    folder = unpack(archive, out / UNPACKED)
    files = [p for p in folder.rglob("*") if p.is_file()]
    if len(files) == 1:
        return files[0]
    if detect_format(folder) == "coco":
        raise BatchInputError(f"{archive.name}: a zip of several COCO files; put each .json into the inbox instead")
    return folder


def process_claimed(claim: Claim, inbox: str | os.PathLike[str], images_root: str | os.PathLike[str],
                    outbox: str | os.PathLike[str], checkpoint: str | os.PathLike[str], cfg: BatchConfig,
                    heartbeat_s: float = 60.0) -> dict[str, Any]:
    """Snap one claimed file, then move it to ``done/`` or (with an error report) ``failed/``.
    Never raises: one bad file must not stop the others."""
    name, claimed = claim["name"], Path(claim["claimed"])
    out: Path | None = None
    try:
        out = output_folder(outbox, name, claimed)
        images = images_for(name, images_root)
        if not images.is_dir():
            raise BatchInputError(f"{name}: images folder {images} does not exist")
        with heartbeat(claimed, heartbeat_s):
            # COCO, a Ground Truth manifest, CVAT XML, a zipped VOC/YOLO folder (detected by
            # content; written back in its format)
            source = rough_source(claimed, out) if claimed.suffix == ".zip" else claimed
            r = batch_snap_any(source, images, out, checkpoint, cfg).batch
        dest = free_path(Path(inbox) / DONE, name)
        os.replace(claimed, dest)
    except Exception as e:  # noqa: BLE001 - reported in failed/, never blocking the others
        if out is not None:
            shutil.rmtree(out / UNPACKED, ignore_errors=True)  # a failed zip leaves no unpacked copy behind
        return _failed(claim, inbox, e)
    s = r.summary
    return {"file": name, "status": "done", "annotations": s["n_annotations"], "snapped": s["status"]["snapped"],
            "kept": s["status"]["kept"], "needs_review": s["needs_review"], "out_dir": str(out), "input": str(dest),
            "error": None, "summary": s}


def file_rows(results: list[dict[str, Any]], abandoned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per file of a run (processed and given up), without the bulky summaries."""
    return [{k: v for k, v in r.items() if k != "summary"} for r in results] + abandoned
