"""Flows ``batch-snap`` (one rough COCO file, or a folder of them) and ``snap-inbox``.

Thin wiring around :mod:`snapper.batch`; tasks exchange paths and small JSON only.

``batch-snap``: plan chunks -> one ``snap-chunk`` task per chunk, fanned out on the task
runner of :mod:`flows.runners` (threads locally; Dask/Ray from ``SNAPPER_DASK_ADDRESS`` /
``SNAPPER_RAY_ADDRESS``, which then need the input, images and ``out_dir`` on a shared
filesystem) -> one ``merge-batch`` task per input file. Every chunk result and the merged
output are written atomically; a re-run reuses the finished chunks (their file names carry
the input's and the weights' hashes), so an interrupted run resumes. The model reference
(checkpoint folder, ``models:/snapper/latest``, ``models:/snapper/3``, a registered name) is
resolved once per flow run, so all chunks use the same weights even if "latest" moves.
Each run publishes Prefect artifacts (counts per status/reason, the review list, Table 1
when ``truth`` is given) and, with ``track=True``, an MLflow run (experiment
``snapper-batch``) with the summary metrics and the summary/review files.

``snap-inbox`` (scheduled, e.g. every 5 minutes): the inbox folder layout is::

    <inbox>/*.json              new rough-annotation files (write elsewhere, then move in;
                                files younger than ``min_age_s`` are left for the next run)
    <inbox>/processing/         claimed files: ``<stem>.<claim id>-<attempt>.json``
    <inbox>/done/<name>.json    inputs snapped successfully
    <inbox>/failed/<name>.json  inputs that could not be snapped, with ``<stem>.error.txt``
    <outbox>/<stem>/            outputs (``snapped.json``, ``boxes.parquet``, ``summary.json``,
                                ``review.csv``); ``outbox`` defaults to ``<inbox>/outbox``

Images of ``<stem>.json`` are looked up in ``<images_root>/<stem>/`` when that folder exists,
else in ``<images_root>`` itself (one shared pool). A file is claimed with one
``os.rename`` into ``processing/`` (atomic within a filesystem): of two overlapping runs
exactly one rename succeeds, the other sees the file gone and moves on, so no file is ever
processed twice. A file that fails (malformed JSON, no images folder, ...) goes to
``failed/`` with its error report and never blocks the others; missing or corrupt
*individual* images are not failures, their boxes are accounted in the output as kept with
reason ``image_missing`` / ``image_corrupt``. A run keeps touching the claims it is working on
(every ``heartbeat_s``); a claim untouched for ``stale_after_s`` was left by a killed run and
the next run takes it over (one atomic rename again, so two runs cannot both take it) and
snaps it, reusing its finished chunks. After ``max_attempts`` claims of the same file (a
file that kills every run that touches it) it goes to ``failed/`` with a report instead.

Run once locally (ephemeral Prefect): ``python -m flows.batch_snap ROUGH.json IMAGES OUT``
or ``python -m flows.batch_snap --inbox INBOX --images-root IMAGES``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import wait

from flows.common import override, resolve
from flows.runners import describe, task_runner_from_env
from snapper.batch import (
    BatchInputError,
    Chunk,
    batch_snap,
    input_files,
    merge_chunks,
    plan_chunks,
    resolve_checkpoint,
    result_for,
    snap_chunk,
)
from snapper.atomic import atomic_write_text
from snapper.config import BatchConfig, from_dict, to_dict

REVIEW_ROWS = 200  # rows of the review list shown in the Prefect artifact (the CSV has them all)


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O hiccups (a flaky mount), never bad data or bugs: retrying cannot fix those."""
    try:
        state.result()
    except OSError as e:
        return not isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError))
    except BaseException:  # noqa: BLE001 - classified, not swallowed: the task still fails
        return False
    return False


def _config(overrides: dict[str, Any] | None, **direct: Any) -> BatchConfig:
    cfg = override(BatchConfig(), overrides)
    for k, v in direct.items():
        if v is not None:
            setattr(cfg, k, v)
    return cfg


def _key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    s = "-".join(parts).lower()
    return "".join(c if c.isalnum() else "-" for c in s).strip("-")[:100] or "batch"


# ----------------------------------------------------------------------------- batch-snap


@task(name="plan-batch-chunks")
def plan_task(ann_file: str, images_dir: str, chunk_images: int) -> list[dict[str, Any]]:
    chunks = plan_chunks(ann_file, images_dir, chunk_images)
    get_run_logger().info("%s: %d chunk(s), %d annotations in images", ann_file, len(chunks),
                          sum(c.n_annotations for c in chunks))
    return [c.to_dict() for c in chunks]


@task(name="snap-chunk", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_transient)
def snap_chunk_task(chunk: dict[str, Any], checkpoint: str, out_dir: str, cfg: dict[str, Any]) -> str:
    c = Chunk.from_dict(chunk)
    t = time.perf_counter()
    path = snap_chunk(c, checkpoint, out_dir, from_dict(BatchConfig, cfg))
    get_run_logger().info("chunk %d (%d images, %d annotations) -> %s in %.1f s", c.index, len(c.image_ids),
                          c.n_annotations, path.name, time.perf_counter() - t)
    return str(path)


@task(name="merge-batch", retries=1, retry_delay_seconds=10, retry_condition_fn=_transient)
def merge_task(ann_file: str, results: list[str], out_dir: str, cfg: dict[str, Any], truth: str | None,
               extra: dict[str, Any]) -> dict[str, Any]:
    path = merge_chunks(ann_file, results, out_dir, from_dict(BatchConfig, cfg), truth=truth, extra=extra)
    return {"annotations": str(path), "summary": result_for(out_dir).summary}


def counts_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"status": "snapped", "reason": "", "annotations": summary["status"]["snapped"]}]
    rows += [{"status": "kept", "reason": r, "annotations": n} for r, n in summary["reasons"].items()]
    rows.append({"status": "needs_review", "reason": ", ".join(f"{k}={v}" for k, v in summary["review_reasons"].items()),
                 "annotations": summary["needs_review"]})
    return rows


def review_table(out_dir: str | Path, limit: int = REVIEW_ROWS) -> list[dict[str, Any]]:
    import pandas as pd

    from snapper.batch import REVIEW_CSV

    df = pd.read_csv(Path(out_dir) / REVIEW_CSV)
    df = df.head(limit).astype(object).where(df.head(limit).notna(), None)
    return [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in df.to_dict("records")]


def _summary_markdown(name: str, s: dict[str, Any]) -> str:
    lines = [f"# Batch snap: {name}", "",
             f"- input: `{s['input']}` ({s['n_annotations']} annotations, {s['n_images']} images)",
             f"- output: `{s['output']}`",
             f"- snapped {s['status']['snapped']}, kept {s['status']['kept']}, needs review {s['needs_review']}",
             f"- model: `{s.get('checkpoint', s.get('model'))}`"]
    mp = s["moved"]["moved_px"]
    if mp.get("n"):
        lines.append(f"- edge movement (px): median {mp['q50']}, 95th pct {mp['q95']}; "
                     f"IoU with rough median {s['moved']['iou_with_rough']['q50']}")
    table = (s.get("truth") or {}).get("table1") or []
    if table:
        import pandas as pd

        from snapper.metrics import format_table

        lines += ["", "## Table 1 against the truth (input = rough boxes)", "", format_table(pd.DataFrame(table))]
    return "\n".join(lines)


def track_summary(s: dict[str, Any], cfg: BatchConfig, out_dir: str | Path, experiment: str, run_name: str) -> str | None:
    """One MLflow run with the summary numbers; returns its id. Tracking trouble is logged,
    not raised: the snapped outputs are already on disk and are the product."""
    logger = get_run_logger()
    try:
        import pandas as pd

        from snapper import tracking
        from snapper.metrics import summary_metrics

        metrics: dict[str, Any] = {"n_annotations": s["n_annotations"], "snapped": s["status"]["snapped"],
                                   "kept": s["status"]["kept"], "needs_review": s["needs_review"],
                                   "fused_objects": s["fused_objects"], "annotations_per_s": s.get("annotations_per_s")}
        metrics.update({f"kept/{k}": v for k, v in s["reasons"].items()})
        for edge, q in s["confidence"].items():
            metrics.update({f"confidence/{edge}/{k}": v for k, v in q.items() if k != "n"})
        for what, q in s["moved"].items():
            if isinstance(q, dict):
                metrics.update({f"moved/{what}/{k}": v for k, v in q.items() if k != "n"})
        table = (s.get("truth") or {}).get("table1") or []
        if table:
            metrics.update(summary_metrics(pd.DataFrame(table), prefix="truth"))
        with tracking.start_run(experiment, run_name=run_name, tags={"flow": "batch-snap", "input": s["input"]}) as run:
            tracking.log_config(cfg, prefix="batch.")
            tracking.log_metrics(metrics)
            for f in ("summary.json", "review.csv", "table1.csv"):
                if (Path(out_dir) / f).is_file():
                    tracking.log_artifact(Path(out_dir) / f)
            return run.info.run_id
    except Exception as e:  # noqa: BLE001
        logger.warning("MLflow tracking failed (%s: %s); outputs in %s are complete", type(e).__name__, e, out_dir)
        return None


def publish(name: str, out_dir: str | Path, s: dict[str, Any]) -> None:
    key = _key("batch-snap", name)
    create_table_artifact(counts_table(s), key=f"{key}-counts", description=f"annotations per status/reason: {name}")
    create_table_artifact(review_table(out_dir), key=f"{key}-review",
                          description=f"review list (first {REVIEW_ROWS}; all in {Path(out_dir) / 'review.csv'})")
    create_markdown_artifact(_summary_markdown(name, s), key=f"{key}-summary", description=f"batch snap of {name}")


@flow(name="batch-snap", task_runner=task_runner_from_env(), log_prints=True)
def batch_snap_flow(
    ann_file: str,
    images_dir: str,
    out_dir: str,
    model: str = "models:/snapper/latest",
    truth: str | None = None,
    chunk_images: int | None = None,
    review_threshold: float | None = None,
    overrides: dict[str, Any] | None = None,
    track: bool = True,
    experiment: str = "snapper-batch",
    artifacts: bool = True,
) -> dict[str, Any]:
    """Snap a rough COCO file (or every ``*.json`` of a folder, each into ``out_dir/<stem>``).

    ``overrides``: any :class:`snapper.config.BatchConfig` field (``{"batch_size": 256}``).
    Returns ``{name: {"annotations": path, "summary": {...}, "mlflow_run_id": ...}}``.
    """
    logger = get_run_logger()
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is not None:
        logger.info("task runner: %s", describe(ctx.task_runner))
    cfg = _config(overrides, chunk_images=chunk_images, review_threshold=review_threshold)
    ann, images, out = resolve(ann_file), resolve(images_dir), resolve(out_dir)
    files = input_files(ann)
    if truth and ann.is_dir():
        raise BatchInputError("truth needs a single rough file, not a folder")
    checkpoint = str(resolve_checkpoint(model))  # once: every chunk uses the same weights
    logger.info("model %s -> %s", model, checkpoint)
    cfg_d = to_dict(cfg)
    t0 = time.perf_counter()
    jobs = []
    for f in files:
        f_out = out / f.stem if ann.is_dir() else out
        chunks = plan_task(str(f), str(images), cfg.chunk_images)
        futures = [snap_chunk_task.submit(c, checkpoint, str(f_out), cfg_d) for c in chunks]
        jobs.append((f, f_out, chunks, futures))
    results: dict[str, Any] = {}
    for f, f_out, chunks, futures in jobs:
        wait(futures)
        paths = [fu.result() for fu in futures]  # raises if a chunk finally failed: no partial merge
        seconds = time.perf_counter() - t0
        n = sum(c["n_annotations"] for c in chunks)
        extra = {"model": model, "checkpoint": checkpoint, "n_chunks": len(chunks), "snap_seconds": round(seconds, 3),
                 "annotations_per_s": round(n / seconds, 2) if seconds > 0 else None}
        merged = merge_task(str(f), paths, str(f_out), cfg_d, str(resolve(truth)) if truth else None, extra)
        s = merged["summary"]
        logger.info("%s: snapped %d, kept %d %s, needs review %d -> %s", f.name, s["status"]["snapped"],
                    s["status"]["kept"], s["reasons"], s["needs_review"], merged["annotations"])
        if artifacts:
            publish(f.stem, f_out, s)
        merged["mlflow_run_id"] = track_summary(s, cfg, f_out, experiment, f"batch-snap {f.stem}") if track else None
        results[f.stem] = merged
    return results


# ------------------------------------------------------------------------------ snap-inbox

PROCESSING, DONE, FAILED = "processing", "done", "failed"


_CLAIM_RE = re.compile(r"^(?P<stem>.+)\.(?P<claim>[0-9A-Za-z]+)-(?P<attempt>[0-9]+)\.json$")


def _claim_to(src: Path, dst: Path) -> bool:
    """Rename ``src`` to ``dst`` and stamp it with the claim time (rename keeps the old mtime,
    which would make a file that waited long in the inbox look abandoned at once). False when
    another run renamed it first: ``os.rename`` of one source by two processes, one wins."""
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        return False
    os.utime(dst)
    return True


def claim_files(inbox: str | Path, claim_id: str, min_age_s: float = 0.0, limit: int | None = None) -> list[dict[str, Any]]:
    """Atomically claim new ``*.json`` files of ``inbox``: ``[{"name", "claimed", "attempt"}]``.
    The destination carries ``claim_id``, so it never overwrites a claim."""
    inbox = Path(inbox)
    proc = inbox / PROCESSING
    proc.mkdir(parents=True, exist_ok=True)
    now, out = time.time(), []
    for src in sorted(inbox.glob("*.json")):
        try:
            if not src.is_file() or (min_age_s > 0 and now - src.stat().st_mtime < min_age_s):
                continue
        except FileNotFoundError:
            continue
        dst = proc / f"{src.stem}.{claim_id}-1.json"
        if not _claim_to(src, dst):
            continue  # claimed by another run between listing and renaming
        out.append({"name": src.name, "claimed": str(dst), "attempt": 1})
        if limit is not None and len(out) >= limit:
            break
    return out


def stale_claims(inbox: str | Path, stale_after_s: float) -> list[Path]:
    """Claims in ``processing/`` that no run has touched for ``stale_after_s``."""
    proc, now = Path(inbox) / PROCESSING, time.time()
    out = []
    for p in sorted(proc.glob("*.json")) if proc.is_dir() else []:
        try:
            if now - p.stat().st_mtime > stale_after_s:
                out.append(p)
        except FileNotFoundError:
            continue
    return out


def reclaim_stale(inbox: str | Path, claim_id: str, stale_after_s: float,
                  max_attempts: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Take over the claims of killed runs: ``(claims to process, files given up on)``.
    A file already claimed ``max_attempts`` times goes to ``failed/`` with a report."""
    inbox = Path(inbox)
    claims, abandoned = [], []
    for p in stale_claims(inbox, stale_after_s):
        m = _CLAIM_RE.match(p.name)
        stem, attempt = (m["stem"], int(m["attempt"])) if m else (p.name.split(".")[0], 1)
        name = f"{stem}.json"
        if attempt >= max_attempts:
            dest = _free_path(inbox / FAILED, name)
            if not _claim_to(p, dest):
                continue
            atomic_write_text(dest.with_name(dest.stem + ".error.txt"),
                              f"{name}: abandoned after {attempt} attempt(s): every run that claimed it stopped "
                              f"without finishing (killed, out of memory?); last claim {p.name}\n")
            abandoned.append({"file": name, "status": "failed", "input": str(dest),
                              "error": f"abandoned after {attempt} attempt(s)"})
            continue
        dst = p.with_name(f"{stem}.{claim_id}-{attempt + 1}.json")
        if _claim_to(p, dst):
            claims.append({"name": name, "claimed": str(dst), "attempt": attempt + 1})
    return claims, abandoned


@contextmanager
def _heartbeat(path: Path, every_s: float) -> Iterator[None]:
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


def _free_path(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name.1``, ``name.2``... when an earlier file of that name is there."""
    folder.mkdir(parents=True, exist_ok=True)
    p, k = folder / name, 0
    while p.exists():
        k += 1
        p = folder / f"{Path(name).stem}.{k}{Path(name).suffix}"
    return p


def images_for(stem: str, images_root: str | Path) -> Path:
    """The sidecar-free convention: ``<images_root>/<stem>/`` if it exists, else the root."""
    root = Path(images_root)
    return root / stem if (root / stem).is_dir() else root


def process_claimed(claim: dict[str, Any], inbox: str, images_root: str, outbox: str, checkpoint: str,
                    cfg: BatchConfig, heartbeat_s: float = 60.0) -> dict[str, Any]:
    """Snap one claimed file, then move it to ``done/`` or (with an error report) ``failed/``.
    Never raises: one bad file must not stop the others."""
    name, claimed = claim["name"], Path(claim["claimed"])
    stem = Path(name).stem
    out = Path(outbox) / stem
    try:
        images = images_for(stem, images_root)
        if not images.is_dir():
            raise BatchInputError(f"{name}: images folder {images} does not exist")
        with _heartbeat(claimed, heartbeat_s):
            r = batch_snap(claimed, images, out, checkpoint, cfg)
        dest = _free_path(Path(inbox) / DONE, name)
        os.replace(claimed, dest)
        s = r.summary
        return {"file": name, "status": "done", "annotations": s["n_annotations"], "snapped": s["status"]["snapped"],
                "kept": s["status"]["kept"], "needs_review": s["needs_review"], "out_dir": str(out), "input": str(dest),
                "error": None, "summary": s}
    except Exception as e:  # noqa: BLE001 - reported in failed/, never blocking the others
        failed = Path(inbox) / FAILED
        dest = _free_path(failed, name)
        report = dest.with_name(dest.stem + ".error.txt")
        atomic_write_text(report, f"{name}: {type(e).__name__}: {e}\n\nclaimed as {claimed}\n\n{traceback.format_exc()}")
        if claimed.exists():
            os.replace(claimed, dest)
        return {"file": name, "status": "failed", "annotations": None, "snapped": None, "kept": None,
                "needs_review": None, "out_dir": None, "input": str(dest), "error": f"{type(e).__name__}: {e}",
                "summary": None}


@task(name="snap-inbox-file")
def inbox_file_task(claim: dict[str, Any], inbox: str, images_root: str, outbox: str, checkpoint: str,
                    cfg: dict[str, Any], heartbeat_s: float = 60.0) -> dict[str, Any]:
    r = process_claimed(claim, inbox, images_root, outbox, checkpoint, from_dict(BatchConfig, cfg), heartbeat_s)
    log = get_run_logger()
    if r["status"] == "done":
        log.info("%s: snapped %d, kept %d, needs review %d -> %s", r["file"], r["snapped"], r["kept"],
                 r["needs_review"], r["out_dir"])
    else:
        log.error("%s: failed (%s) -> %s", r["file"], r["error"], r["input"])
    return r


@flow(name="snap-inbox", task_runner=task_runner_from_env(), log_prints=True)
def snap_inbox(
    inbox: str = "inbox",
    images_root: str = "images",
    outbox: str | None = None,
    model: str = "models:/snapper/latest",
    overrides: dict[str, Any] | None = None,
    min_age_s: float = 10.0,
    max_files: int | None = None,
    stale_after_s: float = 3600.0,
    max_attempts: int = 3,
    track: bool = False,
    experiment: str = "snapper-batch",
    artifacts: bool = True,
) -> dict[str, Any]:
    """Claim the inbox's new rough files and take over the claims of killed runs, snap each
    once (files fan out on the task runner).

    The model is resolved before anything is claimed: if it is unavailable the run fails and
    the files wait in the inbox instead of all landing in ``failed/``. Claims are touched every
    ``stale_after_s / 4`` (at most a minute) while being snapped.
    """
    logger = get_run_logger()
    cfg = _config(overrides)
    if stale_after_s <= 0 or max_attempts < 1:
        raise ValueError("stale_after_s must be > 0 and max_attempts >= 1")
    box, images, outb = resolve(inbox), resolve(images_root), resolve(outbox) if outbox else resolve(inbox) / "outbox"
    box.mkdir(parents=True, exist_ok=True)
    if not any(p.is_file() for p in box.glob("*.json")) and not stale_claims(box, stale_after_s):
        logger.info("inbox %s: nothing new", box)  # idle: no model load, no noise
        return {"claimed": 0, "reclaimed": 0, "done": 0, "failed": 0, "files": []}
    checkpoint = str(resolve_checkpoint(model))
    from prefect.runtime import flow_run

    claim_id = (str(flow_run.id or "") or uuid.uuid4().hex)[:8].replace("-", "") + uuid.uuid4().hex[:4]
    retried, abandoned = reclaim_stale(box, claim_id, stale_after_s, max_attempts)
    for c in retried:
        logger.warning("%s: its claim was abandoned by a run that stopped (killed?); attempt %d now",
                       c["name"], c["attempt"])
    for a in abandoned:
        logger.error("%s: %s -> %s", a["file"], a["error"], a["input"])
    claims = retried + claim_files(box, claim_id, min_age_s=min_age_s, limit=max_files)
    logger.info("inbox %s: claimed %d file(s) as %s (%d taken over from stopped runs)", box, len(claims),
                claim_id, len(retried))
    beat = min(60.0, stale_after_s / 4)
    futures = [inbox_file_task.submit(c, str(box), str(images), str(outb), checkpoint, to_dict(cfg), beat)
               for c in claims]
    wait(futures)
    results = [f.result() for f in futures]
    if track:
        for r in results:
            if r["status"] == "done":
                r["mlflow_run_id"] = track_summary(r["summary"], cfg, r["out_dir"], experiment, f"snap-inbox {r['file']}")
    rows = [{k: r.get(k) for k in ("file", "status", "annotations", "snapped", "kept", "needs_review", "out_dir", "error")}
            for r in results + abandoned]
    if artifacts and rows:
        create_table_artifact(rows, key=_key("snap-inbox", box.name), description=f"files snapped from {box}")
    files = [{k: v for k, v in r.items() if k != "summary"} for r in results] + abandoned
    return {"claimed": len(claims), "reclaimed": len(retried), "done": sum(r["status"] == "done" for r in results),
            "failed": sum(f["status"] == "failed" for f in files), "files": files}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.batch_snap", description="Run batch-snap or snap-inbox once.")
    ap.add_argument("ann_file", nargs="?")
    ap.add_argument("images_dir", nargs="?")
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--model", default="models:/snapper/latest")
    ap.add_argument("--truth")
    ap.add_argument("--chunk-images", type=int)
    ap.add_argument("--review-threshold", type=float)
    ap.add_argument("--no-track", action="store_true")
    ap.add_argument("--inbox", help="run snap-inbox on this folder instead")
    ap.add_argument("--images-root", default="images")
    ap.add_argument("--outbox")
    a = ap.parse_args(argv)
    if a.inbox:
        res = snap_inbox(a.inbox, a.images_root, a.outbox, a.model, min_age_s=0.0, track=not a.no_track)
    else:
        if not (a.ann_file and a.images_dir and a.out_dir):
            ap.error("ann_file, images_dir and out_dir are required without --inbox")
        res = batch_snap_flow(a.ann_file, a.images_dir, a.out_dir, a.model, a.truth, a.chunk_images,
                              a.review_threshold, track=not a.no_track)
        res = {k: {"annotations": v["annotations"], "mlflow_run_id": v["mlflow_run_id"],
                   "status": v["summary"]["status"], "reasons": v["summary"]["reasons"]} for k, v in res.items()}
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
