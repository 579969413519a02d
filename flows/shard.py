"""Flow ``shard-coco``: a COCO dataset -> WebDataset shards + manifest, fanned out per shard.

Thin wiring around :mod:`snapper.data.shards`. Tasks exchange file paths only: the plan task
validates the annotation file once and writes one small JSON spec per shard (plus the split's
index, which the manifest needs) under ``<out_dir>/.plan/``; every shard task reads its spec and
calls ``write_shard``; the manifest task reads the index and calls ``write_manifest``. That
keeps task inputs tiny and lets shard tasks run on any Dask/Ray worker that sees the same
filesystem.

Re-runs are cheap: ``write_shard`` reuses a finished shard whose done-marker matches its
inputs, so an interrupted run resumes with the shards it lacks, and the result reports how
many were written vs reused. Transient I/O errors (``OSError``, e.g. a flaky network mount)
are retried; bad data is not (retrying cannot fix it).

Run locally (ephemeral Prefect): ``python -m flows.shard ANN_JSON IMAGES_DIR OUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.futures import wait
from prefect.utilities.annotations import unmapped

from flows.common import resolve
from flows.runners import describe, task_runner_from_env
from snapper.atomic import atomic_write_json
from snapper.config import SHARD_MIN_BOX_SIZE
from snapper.data.coco import CocoIndex, load_coco
from snapper.data.manifest import Manifest
from snapper.data.shards import (
    DEFAULT_SHARD_SIZE,
    ShardInfo,
    ShardSpec,
    hold_out,
    plan_shards,
    remove_stale_shards,
    write_manifest,
    write_shard,
)

PLAN_DIR = ".plan"


def _is_transient(exc: BaseException | None) -> bool:
    """OSError anywhere in the cause chain (ShardError wraps the OSError that caused it)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


def retry_on_oserror(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry transient I/O failures only."""
    try:
        state.result()
    except BaseException as e:  # noqa: BLE001 - we classify, never swallow (the task still fails)
        return _is_transient(e)
    return False


def _write_plan_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=None, separators=(",", ":"))


# ---------------------------------------------------------------------------- tasks


@task(name="plan-shards", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_oserror)
def plan_task(
    ann_file: str,
    images_dir: str,
    out_dir: str,
    split: str,
    val_fraction: float,
    seed: int,
    shard_size: int,
    min_box_size: float,
    check_images: str,
) -> dict[str, dict[str, Any]]:
    """Validate + split + plan; returns ``{split: {"index": path, "specs": [path, ...]}}``."""
    logger = get_run_logger()
    index = load_coco(ann_file, images_dir, min_box_size=min_box_size, check_images=check_images)  # type: ignore[arg-type]
    c = index.counts()
    logger.info(
        "%s: %d images (%d skipped), %d annotations in = %d kept + %d skipped",
        ann_file, c["images"], c["images_skipped"], c["annotations_input"], c["annotations_kept"], c["annotations_skipped"],
    )
    jobs, _ = hold_out(index, split, val_fraction, seed)
    plan_root = Path(out_dir) / PLAN_DIR
    plan: dict[str, dict[str, Any]] = {}
    for name, ids in jobs:
        sub = index if ids is None else index.subset(ids)
        specs = plan_shards(sub, shard_size, name)
        index_path = plan_root / f"{name}-index.json"
        _write_plan_json(index_path, sub.to_dict())
        spec_paths = []
        for spec in specs:
            p = plan_root / f"{spec.name}.spec.json"
            _write_plan_json(p, spec.to_dict())
            spec_paths.append(str(p))
        plan[name] = {"index": str(index_path), "specs": spec_paths}
        logger.info("split %s: %d images in %d shard(s) of <= %d", name, len(sub.images), len(specs), shard_size)
    return plan


@task(name="write-shard", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=retry_on_oserror)
def shard_task(spec_path: str, out_dir: str) -> dict[str, Any]:
    """Write (or reuse) one shard; returns its ShardInfo as JSON plus ``written``."""
    spec = ShardSpec.from_dict(json.loads(Path(spec_path).read_text()))
    info = write_shard(spec, out_dir)
    d = asdict(info)
    get_run_logger().info("%s: %s (%d samples)", info.file, "written" if info.written else "up to date", info.samples)
    return d


@task(name="write-manifest", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_oserror)
def manifest_task(out_dir: str, split: str, index_path: str, infos: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    index = CocoIndex.from_dict(json.loads(Path(index_path).read_text()))
    shard_infos = [ShardInfo(**i) for i in infos]
    path = write_manifest(out_dir, split, shard_infos, index, params=params)
    remove_stale_shards(Path(out_dir), split, {i.file for i in shard_infos})
    m = Manifest.load(path)
    written = sum(1 for i in shard_infos if i.written)
    return {
        "split": split,
        "manifest": str(path),
        "counts": m.counts,
        "skip_counts": m.skip_counts,
        "image_skip_counts": m.data["image_skip_counts"],
        "written": written,
        "reused": len(shard_infos) - written,
    }


# ---------------------------------------------------------------------------- flow


def _markdown(dataset: str, results: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"# Shards: {dataset}",
        "",
        "| split | images | boxes | crowd (kept, not trained on) | shards | written | reused | skipped annotations | manifest |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split, r in results.items():
        c = r["counts"]
        skips = ", ".join(f"{k}={v}" for k, v in r["skip_counts"].items()) or "none"
        lines.append(
            f"| {split} | {c['images']} | {c['boxes']} | {c['crowd']} | {c['shards']} | {r['written']} | "
            f"{r['reused']} | {skips} | `{r['manifest']}` |"
        )
    return "\n".join(lines)


@flow(name="shard-coco", task_runner=task_runner_from_env())
def shard_coco(
    ann_file: str,
    images_dir: str,
    out_dir: str | None = None,
    dataset: str | None = None,
    split: str = "train",
    val_fraction: float = 0.0,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    min_box_size: float = SHARD_MIN_BOX_SIZE,
    check_images: str = "header",
    artifact: bool = True,
) -> dict[str, dict[str, Any]]:
    """Shard a COCO dataset; with ``val_fraction > 0`` also hold out a ``val`` split by image.

    ``out_dir`` defaults to ``shards/<dataset>`` (``dataset`` defaults to the images folder's
    parent name). Returns ``{split: {manifest, counts, skip_counts, written, reused}}``.
    """
    logger = get_run_logger()
    ann = resolve(ann_file)
    images = resolve(images_dir)
    dataset = dataset or ann.parent.name
    out = resolve(out_dir) if out_dir else resolve(Path("shards") / dataset)
    ctx = FlowRunContext.get()
    if ctx is not None:
        logger.info("task runner: %s", describe(ctx.task_runner))
    plan = plan_task(str(ann), str(images), str(out), split, val_fraction, seed, shard_size, min_box_size, check_images)
    # The same params the CLI records (snapper.data.shards.hold_out + shard_index), so manifests agree.
    params: dict[str, Any] = {"shard_size": shard_size}
    if val_fraction > 0:
        params.update(val_fraction=val_fraction, seed=seed)
    results: dict[str, dict[str, Any]] = {}
    for name, p in plan.items():
        futures = shard_task.map(p["specs"], unmapped(str(out)))
        wait(futures)
        infos = [f.result() for f in futures]  # raises if any shard finally failed
        results[name] = manifest_task(str(out), name, p["index"], infos, params)
        r = results[name]
        logger.info(
            "[%s] %d images, %d boxes, %d shards (%d written, %d up to date) -> %s",
            name, r["counts"]["images"], r["counts"]["boxes"], r["counts"]["shards"], r["written"], r["reused"], r["manifest"],
        )
    if artifact:
        create_markdown_artifact(
            key=f"shards-{_artifact_key(dataset)}", markdown=_markdown(dataset, results), description=f"shards of {dataset}"
        )
    return results


def _artifact_key(name: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    key = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    return key or "dataset"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.shard", description="Run the shard-coco flow once.")
    ap.add_argument("ann_file")
    ap.add_argument("images_dir")
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--dataset")
    ap.add_argument("--split", default="train")
    ap.add_argument("--val-fraction", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    ap.add_argument("--min-box-size", type=float, default=SHARD_MIN_BOX_SIZE)
    ap.add_argument("--check-images", choices=("header", "decode", "none"), default="header")
    a = ap.parse_args(argv)
    res = shard_coco(
        a.ann_file, a.images_dir, a.out_dir, a.dataset, a.split, a.val_fraction, a.seed, a.shard_size, a.min_box_size,
        a.check_images,
    )
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
