"""Flow ``train-snapper``: data -> train -> (regression baseline) -> evaluate -> register -> report.

Thin wiring: every task calls one library function and hands the next one paths and small
JSON. Configuration comes from :mod:`snapper.presets` plus a small ``overrides`` dict
(dotted or nested keys, validated by :func:`snapper.config.apply_overrides`); nothing here
restates a default.

* **Data**: the embedded default (``dataset="synthetic"``) is generated and sharded on first
  use and reused afterwards (both steps are idempotent). A COCO dataset is sharded from
  ``ann_file`` + ``images_dir``; ready shards are used as they are (``train_shards`` /
  ``val_shards``, any webdataset URLs).
* **GPUs**: ``gpus > 1`` runs ``torchrun --standalone --nproc_per_node=N -m snapper.cli train
  --config <yaml>`` in a subprocess (:mod:`snapper.launch`) and streams its log into the flow
  run (plus a progress artifact); otherwise training runs in-process (CPU or one GPU).
* **Registration** happens after evaluation, so a model is registered only once it has been
  scored; the scores travel as tags of the model version.
* **Report**: Prefect artifacts with Table 1 (markdown + table) and the MLflow run.

Run once locally with an ephemeral Prefect server: ``python -m flows.train`` (what ``make
demo`` does). Deployed: ``prefect deployment run 'train-snapper/demo'``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext

from flows.common import SYNTHETIC, jsonable, override, resolve, synthetic_name
from flows.runners import task_runner_from_env
from flows.shard import shard_coco
from snapper import tracking
from snapper.config import ConfigError, EvalConfig, TrainConfig, from_dict, to_dict
from snapper.data.manifest import shard_urls
from snapper.data.synthetic import generate
from snapper.evaluate import evaluate
from snapper.launch import stream_command, torchrun_command, write_launch_config
from snapper.presets import preset_config
from snapper.registry import register_checkpoint
from snapper.train import train
from snapper.train_log import progress_of
from snapper.registry import version_of_run
from snapper.tracking import run_link

TABLE_KEY = "snapper-table1"
ROWS_KEY = "snapper-table1-rows"
PROGRESS_KEY = "snapper-train-progress"

# Kept for flows.evaluate and older callers: the link is built in the library.


# ---------------------------------------------------------------------------- data


@task(name="synthesize-data")
def synth_task(out_dir: str, num_images: int, seed: int) -> str:
    return str(generate(out_dir, num_images=num_images, seed=seed))


@task(name="shard-urls")
def shard_urls_task(out_dir: str, split: str) -> list[str]:
    return shard_urls(out_dir, split)


def ensure_data(
    dataset: str,
    ann_file: str | None,
    images_dir: str | None,
    num_images: int,
    val_fraction: float,
    shard_size: int,
    seed: int,
) -> dict[str, list[str]]:
    """Train/val shard URLs, generating and sharding what is missing (idempotent)."""
    if ann_file is None:
        if dataset != SYNTHETIC:
            # A dataset that was sharded before: shards/<dataset>/{train,val}-manifest.json.
            root = str(resolve(Path("shards") / dataset))
            return {"train": shard_urls_task(root, "train"), "val": shard_urls_task(root, "val")}
        # One folder per generator setting, so a small CI run never replaces the demo's data.
        dataset = synthetic_name(num_images, seed)
        data_dir = resolve(Path("data") / dataset)
        ann_file = synth_task(str(data_dir), num_images, seed)
        images_dir = str(data_dir / "images")
    if images_dir is None:
        raise ValueError("ann_file needs images_dir")
    out = str(resolve(Path("shards") / dataset))
    shard_coco(
        ann_file=str(ann_file), images_dir=str(images_dir), out_dir=out, dataset=dataset, split="train",
        val_fraction=val_fraction, seed=seed, shard_size=shard_size,
    )
    return {"train": shard_urls_task(out, "train"), "val": shard_urls_task(out, "val")}


# ---------------------------------------------------------------------------- training


class _ForwardToRun(logging.Handler):
    """Copies library log records (``snapper.*``) into the Prefect run log, and feeds progress."""

    def __init__(self, logger: Any, on_message: Callable[[str], None]):
        super().__init__(logging.INFO)
        self._logger = logger
        self._on_message = on_message

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            self._logger.log(record.levelno, "%s: %s", record.name, msg)
            self._on_message(msg)
        except Exception:  # noqa: BLE001 - logging must never break training
            self.handleError(record)


@contextlib.contextmanager
def _library_logs_to(logger: Any, on_message: Callable[[str], None]) -> Iterator[None]:
    """Route the library's ``logging`` ("snapper.*") into the run log (shown in the UI)
    instead of letting it reach the console a second time through the root logger."""
    lib_logger = logging.getLogger("snapper")
    handler = _ForwardToRun(logger, on_message)
    old_level, old_propagate = lib_logger.level, lib_logger.propagate
    lib_logger.addHandler(handler)
    lib_logger.propagate = False
    if lib_logger.getEffectiveLevel() > logging.INFO:
        lib_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        lib_logger.removeHandler(handler)
        lib_logger.setLevel(old_level)
        lib_logger.propagate = old_propagate


class _Progress:
    """A Prefect progress artifact driven by ``step N/M`` log lines (updates at most per 1%)."""

    def __init__(self, label: str):
        self._id = None
        self._last = -1.0
        try:
            self._id = create_progress_artifact(0.0, key=PROGRESS_KEY, description=f"training {label}")
        except Exception:  # noqa: BLE001 - progress is a nicety, not a reason to fail
            self._id = None

    def __call__(self, message: str) -> None:
        pct = progress_of(message)
        if self._id is None or pct is None:
            return
        if pct - self._last >= 1.0 or pct >= 100.0:
            self._last = pct
            try:
                update_progress_artifact(self._id, min(pct, 100.0))
            except Exception:  # noqa: BLE001
                pass


@task(name="train-model")
def train_task(cfg_dict: dict[str, Any], gpus: int = 0) -> dict[str, Any]:
    """Train one model (``snapper.train.train``); returns the TrainResult as JSON.

    ``gpus > 1``: torchrun in a subprocess, its output streamed into the run log."""
    cfg = from_dict(TrainConfig, cfg_dict)
    logger = get_run_logger()
    progress = _Progress(Path(cfg.out_dir).name)
    if gpus > 1:
        cmd = torchrun_command(write_launch_config(cfg), gpus)
        logger.info("launching: %s", " ".join(cmd))

        def on_line(line: str) -> None:
            logger.info("%s", line)
            progress(line)

        stream_command(cmd, on_line)
        # The finished run's state holds its result: train() returns it at once without training.
        return jsonable(train(cfg))
    with _library_logs_to(logger, progress):
        return jsonable(train(cfg))


# ---------------------------------------------------------------------------- evaluation


@task(name="evaluate-models")
def evaluate_task(
    checkpoints: dict[str, str], eval_cfg: dict[str, Any], out_dir: str, mlflow_run_id: str | None
) -> dict[str, Any]:
    """``snapper.evaluate.evaluate`` (identity + every model on the same boxes); logs to the
    given MLflow run. Returns paths, the flat metrics and the Table 1 markdown."""
    res = evaluate(checkpoints, from_dict(EvalConfig, eval_cfg), out_dir, include_identity=True)
    if mlflow_run_id:
        tracking.log_evaluation(res.metrics, [*res.files.values(), *res.plots.values()], run_id=mlflow_run_id)
    overall = res.summary[res.summary["size"] == "all"]
    return {
        "out_dir": res.out_dir,
        "parquet": res.parquet,
        "metrics": jsonable(res.metrics),
        "table_md": res.table_md,
        "rows": jsonable(overall),
        "plots": jsonable(res.plots),
        "files": jsonable(res.files),
    }


@task(name="register-model")
def register_task(run_id: str, checkpoint: str, name: str, tags: dict[str, str]) -> int:
    """``snapper.registry.register_checkpoint``; a re-run of the same MLflow run reuses its version."""
    existing = version_of_run(name, run_id)
    if existing is not None:
        get_run_logger().info("run %s is already registered as %s version %d", run_id, name, existing)
        return existing
    return register_checkpoint(run_id, checkpoint, name, tags=tags)


# ---------------------------------------------------------------------------- report


def report_markdown(name: str, ev: dict[str, Any], train: dict[str, Any], registered: dict[str, Any] | None,
                    link: str | None) -> str:
    run_id = train.get("mlflow_run_id")
    where = (f"[{run_id}]({link})" if link else f"`{run_id}` (local store: `make mlflow-ui`)") if run_id else "not tracked"
    reg = f"`{registered['name']}` version {registered['version']}" if registered else "not registered"
    return "\n".join(
        [
            f"# train-snapper: {name}",
            "",
            f"- MLflow run: {where}",
            f"- registered model: {reg}",
            f"- steps: {train.get('steps')}; best checkpoint: `{train.get('best_checkpoint')}`",
            f"- per-box table: `{ev['parquet']}`",
            "",
            ev["table_md"],
        ]
    )


@task(name="publish-report")
def report_task(name: str, ev: dict[str, Any], train: dict[str, Any], registered: dict[str, Any] | None) -> str:
    run_id = train.get("mlflow_run_id")
    link = run_link(run_id)
    md = report_markdown(name, ev, train, registered, link)
    create_markdown_artifact(key=TABLE_KEY, markdown=md, description=f"Table 1 for {name}")
    create_table_artifact(key=ROWS_KEY, table=ev["rows"], description=f"Table 1 rows for {name}")
    if link:
        create_link_artifact(key="snapper-mlflow-run", link=link, link_text=f"MLflow run {run_id}")
    return md


# ---------------------------------------------------------------------------- the flow


def _shards(train_shards: list[str] | None, val_shards: list[str] | None, **data: Any) -> dict[str, list[str]]:
    """Explicit shard lists, else :func:`ensure_data`'s (explicit val shards win)."""
    if train_shards:
        shards = {"train": list(train_shards), "val": list(val_shards or [])}
    else:
        shards = ensure_data(**data)
        if val_shards:
            shards["val"] = list(val_shards)
    if not shards["val"]:
        raise ValueError("no validation shards: set val_fraction > 0 or pass val_shards (evaluation needs held-out data)")
    return shards


def _base_config(preset: str, overrides: dict[str, Any] | None, shards: dict[str, list[str]], gpus: int) -> TrainConfig:
    """preset -> overrides -> what this flow decides: data, registration (later, after evaluation)."""
    base = override(preset_config(preset), overrides)
    base = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, train_shards=shards["train"], val_shards=shards["val"]),
        registered_model=None,  # registered below, after evaluation
    )
    if gpus == 1 and base.device == "auto":
        base = dataclasses.replace(base, device="cuda")
    return base


def _version_tags(metrics: dict[str, Any], dataset: str, preset: str) -> dict[str, str]:
    """The model's scores (``snapper.all.*``) and provenance as model-version tags."""
    tags = {k.replace("/", "."): f"{v:.4g}" for k, v in metrics.items()
            if k.startswith("snapper/all/") and isinstance(v, (int, float))}
    tags.update({"dataset": dataset, "preset": preset})
    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow_run is not None:
        tags["prefect.flow_run_id"] = str(ctx.flow_run.id)
    return tags


@flow(name="train-snapper", task_runner=task_runner_from_env())
def train_snapper(
    name: str = "demo",
    preset: str = "demo",
    overrides: dict[str, Any] | None = None,
    dataset: str = SYNTHETIC,
    ann_file: str | None = None,
    images_dir: str | None = None,
    train_shards: list[str] | None = None,
    val_shards: list[str] | None = None,
    num_images: int = 300,
    val_fraction: float = 0.2,
    shard_size: int = 50,
    seed: int = 0,
    regression_baseline: bool = True,
    regression_overrides: dict[str, Any] | None = None,
    eval_overrides: dict[str, Any] | None = None,
    gpus: int = 0,
    register_model: bool = True,
    registered_model: str = "snapper",
    runs_dir: str = "runs",
) -> dict[str, Any]:
    """Train a Snapper model (and the regression baseline), evaluate both against the rough
    boxes, register the model, and publish Table 1.

    ``preset``: a :data:`snapper.presets.PRESETS` name; ``overrides``: TrainConfig keys (e.g.
    ``{"steps": 200, "model.backbone": "resnet50"}``); ``regression_overrides`` go on top for
    the baseline; ``eval_overrides``: EvalConfig keys. Outputs go to ``<runs_dir>/<name>``
    (relative to ``$SNAPPER_HOME`` or the working directory); re-running the same name resumes
    or reuses the finished training.
    """
    logger = get_run_logger()
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")
    # 1. data
    shards = _shards(train_shards, val_shards, dataset=dataset, ann_file=ann_file, images_dir=images_dir,
                     num_images=num_images, val_fraction=val_fraction, shard_size=shard_size, seed=seed)
    logger.info("data: %d train shard(s), %d val shard(s)", len(shards["train"]), len(shards["val"]))

    # 2. training: the model, then (optionally) the regression baseline
    runs = resolve(runs_dir)
    base = _base_config(preset, overrides, shards, gpus)
    edges_cfg = dataclasses.replace(base, out_dir=str(runs / name), run_name=base.run_name or name)
    edges = train_task(to_dict(edges_cfg), gpus)
    logger.info("model trained: %s steps, best checkpoint %s", edges["steps"], edges["best_checkpoint"])
    checkpoints = {"snapper": edges["best_checkpoint"]}
    regression = None
    if regression_baseline:
        reg_cfg = override(edges_cfg, {"model.head": "regression", **(regression_overrides or {})})
        reg_cfg = dataclasses.replace(reg_cfg, out_dir=str(runs / f"{name}-regression"),
                                      run_name=f"{edges_cfg.run_name}-regression")
        regression = train_task.with_options(name="train-regression-baseline")(to_dict(reg_cfg), gpus)
        checkpoints["regression"] = regression["best_checkpoint"]

    # 3. evaluation on the held-out shards (identity + models, same boxes), logged to the model's run
    eval_cfg = override(EvalConfig(shards=shards["val"], device=base.device), eval_overrides)
    ev = evaluate_task(checkpoints, to_dict(eval_cfg), str(runs / name / "eval"), edges.get("mlflow_run_id"))

    # 4. registration
    registered = None
    if register_model and edges.get("mlflow_run_id"):
        tags = _version_tags(ev["metrics"], dataset, preset)
        version = register_task(edges["mlflow_run_id"], edges["best_checkpoint"], registered_model, tags)
        registered = {"name": registered_model, "version": version}
    elif register_model:
        logger.warning("MLflow tracking is off for this run (mlflow=false): nothing to register")

    # 5. report
    report_task(name, ev, edges, registered)
    logger.info("Table 1 on %d held-out shard(s):\n%s", len(shards["val"]), ev["table_md"].split("\n## By")[0])
    return {
        "name": name,
        "train": edges,
        "regression": regression,
        "eval": {k: ev[k] for k in ("out_dir", "parquet", "table_md", "files", "plots")},
        "registered": registered,
        "mlflow_run_id": edges.get("mlflow_run_id"),
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m flows.train", description="Run the train-snapper flow once.")
    ap.add_argument("--name", default="demo")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainConfig override (cast to the field's type), repeatable: --set steps=100")
    ap.add_argument("--no-regression", action="store_true", help="skip the regression baseline")
    ap.add_argument("--gpus", type=int, default=0, help="> 1: torchrun with this many processes")
    ap.add_argument("--dataset", default=SYNTHETIC,
                    help="'synthetic' (generated), or a folder under shards/ (with --ann-file: sharded first)")
    ap.add_argument("--ann-file", help="COCO instances JSON to shard into shards/<dataset>")
    ap.add_argument("--images-dir", help="images of --ann-file")
    ap.add_argument("--val-fraction", type=float, default=0.2, help="held-out images when sharding")
    ap.add_argument("--num-images", type=int, default=300, help="size of the synthetic dataset")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = value  # a string: cast to the field's type by apply_overrides
    try:  # checked here, before the flow (and anything it writes) starts
        override(preset_config(args.preset), overrides)
    except ConfigError as e:
        ap.error(f"--set {e}")
    except ValueError as e:  # an unknown preset
        ap.error(str(e))
    res = train_snapper(name=args.name, preset=args.preset, overrides=overrides or None,
                        regression_baseline=not args.no_regression, gpus=args.gpus, num_images=args.num_images,
                        dataset=args.dataset, ann_file=args.ann_file, images_dir=args.images_dir,
                        val_fraction=args.val_fraction)
    print("\n" + res["eval"]["table_md"])
    print(f"per-box table: {res['eval']['parquet']}")
    if res["registered"]:
        print(f"registered model: {res['registered']['name']} version {res['registered']['version']}")
    if res["mlflow_run_id"]:
        link = run_link(res["mlflow_run_id"])
        if link:
            print(f"MLflow run: {link}")
        else:
            print(f"MLflow run {res['mlflow_run_id']} is in the local store; browse it with `make mlflow-ui` "
                  "(http://127.0.0.1:5000) or start the whole stack with `make stack-up`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
