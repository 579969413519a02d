"""Flows ``batch-snap`` (one rough COCO file, or a folder of them) and ``snap-inbox``.

Thin wiring around :mod:`snapper.batch` and :mod:`snapper.batch.inbox` (the claim protocol);
tasks exchange paths and small JSON only.

``batch-snap``: plan the job as ``snapper batch-snap`` does
(:func:`snapper.formats.pipeline.plan_batch`: format, folders, input converted when not COCO,
model resolved) -> plan chunks -> one ``snap-chunk`` task per chunk, fanned out on the task
runner of :mod:`flows.runners` (threads locally; Dask/Ray from ``SNAPPER_DASK_ADDRESS`` /
``SNAPPER_RAY_ADDRESS``, which then need the input, images and ``out_dir`` on a shared
filesystem) -> one ``merge-batch`` task per input file (merged, and written back in the
input's format: :func:`snapper.formats.pipeline.finish_job`). Every chunk result and the merged
output are written atomically; a re-run reuses the finished chunks (their file names carry
the input's, each image's and the weights' hashes), so an interrupted run resumes and a
replaced image or model re-snaps exactly the chunks it changes. The model reference
(checkpoint folder, ``models:/snapper@champion``, ``models:/snapper/3``, a registered name) is
resolved once per flow run, so all chunks use the same weights even if the champion alias moves.
Each run publishes Prefect artifacts (counts per status/reason, the review list, Table 1
when ``truth`` is given) and, with ``track=True``, an MLflow run (experiment
``snapper-batch``) with the summary metrics and the summary/review files.

``snap-inbox`` (scheduled, e.g. every 5 minutes): the inbox folder layout is::

    <inbox>/*.json              new rough-annotation files (write elsewhere, then move in;
                                also *.manifest / *.jsonl Ground Truth manifests, *.xml CVAT;
                                files younger than ``min_age_s`` are left for the next run)
    <inbox>/processing/         claimed files: ``<stem>.<claim id>-<attempt>.json``
    <inbox>/done/<name>.json    inputs snapped successfully
    <inbox>/failed/<name>.json  inputs that could not be snapped, with ``<stem>.error.txt``
    <outbox>/<stem>/            outputs (``snapped.json``, ``boxes.parquet``, ``summary.json``,
                                ``review.csv``); ``outbox`` defaults to ``<inbox>/outbox``

Images of ``<stem>.json`` are looked up in ``<images_root>/<stem>/`` when that folder exists,
else in ``<images_root>`` itself (one shared pool). The claim protocol (one atomic rename per
claim, heartbeats, takeover of stale claims, ``max_attempts``) is :mod:`snapper.batch.inbox`. A file
that fails (malformed JSON, no images folder, ...) goes to ``failed/`` with its error report
and never blocks the others; missing or corrupt *individual* images are not failures, their
boxes are accounted in the output as kept with reason ``image_missing`` / ``image_corrupt``.

Run once locally (ephemeral Prefect): ``python -m flows.batch_snap ROUGH.json IMAGES OUT``
or ``python -m flows.batch_snap --inbox INBOX --images-root IMAGES``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.futures import wait
from prefect.runtime import flow_run

from flows.common import override, resolve
from flows.runners import describe, task_runner_from_env
from snapper.batch import Chunk, plan_chunks, run_chunk
from snapper.batch import inbox as ib
from snapper.batch.report import (
    REVIEW_ROWS,
    counts_table,
    log_summary,
    review_table,
    summary_markdown,
)
from snapper.batch.schema import BatchInputError
from snapper.config import BatchConfig
from snapper.errors import UserInputError
from snapper.formats.pipeline import BatchPlan, FileJob, finish_job, plan_batch
from snapper.models.reference import DEFAULT_MODEL, resolve_model
from snapper.overrides import from_dict, to_dict


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
    """``overrides`` (``{"snap": {"batch_size": 256}}`` or ``{"snap.batch_size": 256}``), then the
    flow's own parameters (``{"snap.passes": 2}``, which win), checked before any work."""
    return override(override(BatchConfig(), overrides), {k: v for k, v in direct.items() if v is not None})


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
def snap_chunk_task(chunk: dict[str, Any], checkpoint: str, out_dir: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """``{"path", "reused", "n_annotations"}`` of one chunk's result."""
    c = Chunk.from_dict(chunk)
    t = time.perf_counter()
    done = run_chunk(c, checkpoint, out_dir, from_dict(BatchConfig, cfg))
    get_run_logger().info("chunk %d (%d images, %d annotations) -> %s in %.1f s%s", c.index, len(c.image_ids),
                          c.n_annotations, done.path.name, time.perf_counter() - t,
                          " (reused)" if done.reused else "")
    return done.to_dict()


@task(name="plan-batch-job")
def plan_job_task(ann_file: str, images_dir: str, out_dir: str, model: str, cfg: dict[str, Any], input_format: str,
                  label_attribute: str | None, truth: str | None) -> dict[str, Any]:
    """:func:`snapper.formats.pipeline.plan_batch`, as ``snapper batch-snap`` plans it: format,
    folders, input (converted when not COCO), the model resolved once for every chunk."""
    plan = plan_batch(ann_file, images_dir, out_dir, model, from_dict(BatchConfig, cfg), input_format,
                      label_attribute, truth)
    get_run_logger().info("%s (%s): %d file(s); model %s -> %s", ann_file, plan.format, len(plan.jobs), model,
                          plan.checkpoint)
    return plan.to_dict()


@task(name="merge-batch", retries=1, retry_delay_seconds=10, retry_condition_fn=_transient)
def merge_task(plan: dict[str, Any], job: dict[str, Any], done: list[dict[str, Any]], cfg: dict[str, Any],
               seconds: float) -> dict[str, Any]:
    """One file's chunk results merged into its outputs (and written back in its format)."""
    r = finish_job(BatchPlan.from_dict(plan), FileJob(**job), done, from_dict(BatchConfig, cfg), seconds)
    merged: dict[str, Any] = {"annotations": str(r.batch.annotations), "summary": r.batch.summary}
    if r.format != "coco":
        merged["written_back"] = [str(w) for w in r.written]
        get_run_logger().info("%s written back: %d file(s)", r.format, len(r.written))
    return merged


def track_summary(s: dict[str, Any], cfg: BatchConfig, out_dir: str | Path, experiment: str, run_name: str,
                  flow_name: str = "batch-snap") -> str | None:
    """One MLflow run with the summary numbers; returns its id. Tracking trouble is logged,
    not raised: the snapped outputs are already on disk and are the product."""
    try:
        return log_summary(s, cfg, out_dir, experiment, run_name, tags={"flow": flow_name})
    except Exception as e:  # noqa: BLE001
        get_run_logger().warning("MLflow tracking failed (%s: %s); outputs in %s are complete",
                                 type(e).__name__, e, out_dir)
        return None


def publish(name: str, out_dir: str | Path, s: dict[str, Any]) -> None:
    key = _key("batch-snap", name)
    create_table_artifact(counts_table(s), key=f"{key}-counts", description=f"annotations per status/reason: {name}")
    create_table_artifact(review_table(out_dir), key=f"{key}-review",
                          description=f"review list (first {REVIEW_ROWS}; all in {Path(out_dir) / 'review.csv'})")
    create_markdown_artifact(summary_markdown(name, s), key=f"{key}-summary", description=f"batch snap of {name}")


@flow(name="batch-snap", task_runner=task_runner_from_env(), log_prints=True)
def batch_snap_flow(
    ann_file: str,
    images_dir: str,
    out_dir: str,
    model: str = DEFAULT_MODEL,
    truth: str | None = None,
    chunk_images: int | None = None,
    review_threshold: float | None = None,
    review_budget: float | None = None,
    passes: int | None = None,
    input_format: str = "auto",
    label_attribute: str | None = None,
    overrides: dict[str, Any] | None = None,
    track: bool = True,
    experiment: str = "snapper-batch",
    artifacts: bool = True,
) -> dict[str, Any]:
    """Snap a rough COCO file (or every ``*.json`` of a folder, each into ``out_dir/<stem>``),
    or a Ground Truth manifest, VOC / YOLO folder or CVAT XML (``input_format``, detected by default;
    written back in its format under ``out_dir/snapped``, see :mod:`snapper.formats`).

    ``passes=2`` adds the zoom-in pass (models trained with ``model.zoom``). ``review_budget``: also
    list that many single edges (or that share of them) least likely right, ``review_edges.csv``
    (:class:`snapper.config.BatchConfig`). ``overrides``: any
    :class:`snapper.config.BatchConfig` field (``{"chunk_images": 64, "snap": {"batch_size": 256}}``).
    Returns ``{name: {"annotations": path, "summary": {...}, "mlflow_run_id": ...}}``.
    """
    logger = get_run_logger()
    ctx = FlowRunContext.get()
    if ctx is not None:
        logger.info("task runner: %s", describe(ctx.task_runner))
    cfg = _config(overrides, chunk_images=chunk_images, review_threshold=review_threshold,
                  review_budget=review_budget, **{"snap.passes": passes})
    cfg_d = to_dict(cfg)
    plan_d = plan_job_task(str(resolve(ann_file)), str(resolve(images_dir)), str(resolve(out_dir)), model, cfg_d,
                           input_format, label_attribute, str(resolve(truth)) if truth else None)
    plan = BatchPlan.from_dict(plan_d)
    t0 = time.perf_counter()
    pending = []
    failed = [f"{u['file']}: {u['error']}" for u in plan.report.get("unreadable", [])]
    for job in plan.jobs:
        try:
            chunks = plan_task(job.rough, plan.images_dir, cfg.chunk_images)
        except UserInputError as e:  # one bad file of a folder: reported at the end, the others snapped
            failed.append(str(e))
            continue
        pending.append((job, [snap_chunk_task.submit(c, plan.checkpoint, job.out_dir, cfg_d) for c in chunks]))
    results: dict[str, Any] = {}
    for job, futures in pending:
        wait(futures)
        done = [fu.result() for fu in futures]  # raises if a chunk finally failed: no partial merge
        merged = merge_task(plan_d, dataclasses.asdict(job), done, cfg_d, time.perf_counter() - t0)
        s = merged["summary"]
        logger.info("%s: snapped %d, kept %d %s, needs review %d -> %s", job.label, s["status"]["snapped"],
                    s["status"]["kept"], s["reasons"], s["needs_review"], merged["annotations"])
        if artifacts:
            publish(job.name, job.out_dir, s)
        merged["mlflow_run_id"] = (track_summary(s, cfg, job.out_dir, experiment, f"batch-snap {job.name}")
                                   if track else None)
        results[job.name] = merged
    if failed:  # the run ends Failed, saying which files, after every other file was snapped
        for line in failed:
            logger.error("%s", line)
        raise BatchInputError(f"{len(failed)} input file(s) not snapped: {'; '.join(failed)}")
    return results


# ------------------------------------------------------------------------------ snap-inbox


@task(name="snap-inbox-file")
def inbox_file_task(claim: dict[str, Any], inbox: str, images_root: str, outbox: str, checkpoint: str,
                    cfg: dict[str, Any], heartbeat_s: float = 60.0) -> dict[str, Any]:
    r = ib.process_claimed(claim, inbox, images_root, outbox, checkpoint, from_dict(BatchConfig, cfg), heartbeat_s)
    log = get_run_logger()
    if r["status"] == "done":
        log.info("%s: snapped %d, kept %d, needs review %d -> %s", r["file"], r["snapped"], r["kept"],
                 r["needs_review"], r["out_dir"])
    else:
        log.error("%s: failed (%s) -> %s", r["file"], r["error"], r["input"])
    return r


def _log_round(logger: Any, box: Path, claimed: ib.ClaimRound) -> None:
    for c in claimed.retried:
        logger.warning("%s: its claim was abandoned by a run that stopped (killed?); attempt %d now",
                       c["name"], c["attempt"])
    for a in claimed.abandoned:
        logger.error("%s: %s -> %s", a["file"], a["error"], a["input"])
    logger.info("inbox %s: claimed %d file(s) as %s (%d taken over from stopped runs)", box, len(claimed.claims),
                claimed.claim_id, len(claimed.retried))


@flow(name="snap-inbox", task_runner=task_runner_from_env(), log_prints=True)
def snap_inbox(
    inbox: str = "inbox",
    images_root: str = "images",
    outbox: str | None = None,
    model: str = DEFAULT_MODEL,
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
    box, images = resolve(inbox), resolve(images_root)
    outb = resolve(outbox) if outbox else box / ib.OUTBOX
    box.mkdir(parents=True, exist_ok=True)
    if not ib.has_work(box, stale_after_s):
        logger.info("inbox %s: nothing new", box)  # idle: no model load, no noise
        return {"claimed": 0, "reclaimed": 0, "done": 0, "failed": 0, "files": []}
    checkpoint = str(resolve_model(model))
    claimed = ib.claim_round(box, ib.new_claim_id(str(flow_run.id or "")), min_age_s, max_files, stale_after_s,
                             max_attempts)
    _log_round(logger, box, claimed)
    beat = ib.heartbeat_interval(stale_after_s)
    futures = [inbox_file_task.submit(c, str(box), str(images), str(outb), checkpoint, to_dict(cfg), beat)
               for c in claimed.claims]
    wait(futures)
    results = [f.result() for f in futures]
    if track:
        for r in results:
            if r["status"] == "done":
                r["mlflow_run_id"] = track_summary(r["summary"], cfg, r["out_dir"], experiment,
                                                   f"snap-inbox {r['file']}")
    files = ib.file_rows(results, claimed.abandoned)
    if artifacts and files:
        cols = ("file", "status", "annotations", "snapped", "kept", "needs_review", "out_dir", "error")
        create_table_artifact([{k: r.get(k) for k in cols} for r in files], key=_key("snap-inbox", box.name),
                              description=f"files snapped from {box}")
    return {"claimed": len(claimed.claims), "reclaimed": len(claimed.retried),
            "done": sum(r["status"] == "done" for r in results),
            "failed": sum(f["status"] == "failed" for f in files), "files": files}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.batch_snap", description="Run batch-snap or snap-inbox once.")
    ap.add_argument("ann_file", nargs="?")
    ap.add_argument("images_dir", nargs="?")
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--truth")
    ap.add_argument("--chunk-images", type=int)  # checked by BatchConfig, before any work
    ap.add_argument("--review-threshold", type=float)
    ap.add_argument("--passes", type=int, choices=(1, 2))
    ap.add_argument("--format", default="auto", help="auto, coco, groundtruth, voc, yolo or cvat")
    ap.add_argument("--label-attribute", help="Ground Truth: the label attribute (default: detected)")
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
                              a.review_threshold, passes=a.passes, input_format=a.format,
                              label_attribute=a.label_attribute, track=not a.no_track)
        res = {k: {"annotations": v["annotations"], "mlflow_run_id": v["mlflow_run_id"],
                   "status": v["summary"]["status"], "reasons": v["summary"]["reasons"]} for k, v in res.items()}
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
