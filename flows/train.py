"""Flow ``train-snapper``: data -> train -> (regression baseline) -> evaluate -> register -> report.

Thin wiring: every task calls one library function and hands the next one paths and small
JSON. Configuration comes from :mod:`snapper.training.presets` plus a small ``overrides`` dict
(dotted or nested keys, validated by :func:`snapper.overrides.apply_overrides`); nothing here
restates a default.

* **Data**: the embedded default (``dataset="synthetic"``) is generated and sharded on first
  use and reused afterwards (both steps are idempotent). A COCO dataset is sharded from
  ``ann_file`` + ``images_dir``; ready shards are used as they are (``train_shards`` /
  ``val_shards``, any webdataset URLs).
* **GPUs**: ``gpus > 1`` runs ``torchrun --standalone --nproc_per_node=N -m snapper.cli train
  --config <yaml>`` in a subprocess (:mod:`snapper.training.launch`) and streams its log into the flow
  run (plus a progress artifact); otherwise training runs in-process (CPU or one GPU).
* **Evaluation** scores the rough boxes (identity), the model, the regression baseline and
  the current champion on the same held-out boxes.
* **Registration** happens after evaluation, so a model is registered only once it has been
  scored; it becomes champion only when it beats the current one (:mod:`flows.lifecycle`).
* **Report**: Prefect artifacts with Table 1 (markdown + table) and the MLflow run; the flow
  log and ``python -m flows.train`` end with the MLflow run link and the registered version.

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
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.common import (
    SYNTHETIC,
    artifact_key,
    headline,
    jsonable,
    mlflow_ui,
    override,
    resolve,
    synthetic_name,
    table_rows,
)
from flows.lifecycle import (
    CHAMPION_METHOD,
    champion_check_task,
    champion_task,
    describe_task,
    flow_context,
    register_task,
    report_task,
)
from flows.runners import task_runner_from_env
from flows.shard import shard_coco
from snapper.config import EvalConfig, TrainConfig
from snapper.data.manifest import shard_urls
from snapper.data.synthetic import generate
from snapper.errors import ConfigError
from snapper.evaluation.evaluate import IDENTITY, evaluate
from snapper.mlops import tracking
from snapper.mlops.registry import DEFAULT_MODEL_NAME, model_name_for
from snapper.overrides import from_dict, to_dict
from snapper.training.launch import (
    stream_command,
    torch_threads_side_by_side,
    torchrun_command,
    train_command,
    write_launch_config,
)
from snapper.training.log import progress_of
from snapper.training.loop import train
from snapper.training.presets import preset_config
from snapper.training.presets import regression_baseline as regression_baseline_config

PROGRESS_KEY = "snapper-train-progress"


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
            self._id = create_progress_artifact(0.0, key=artifact_key(PROGRESS_KEY, label),
                                                description=f"Training progress of {label} (percent of its steps)")
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
def train_task(cfg_dict: dict[str, Any], gpus: int = 0, threads: int | None = None) -> dict[str, Any]:
    """Train one model (``snapper.training.loop.train``); returns the TrainResult as JSON.

    ``gpus > 1``: torchrun in a subprocess; ``threads``: a process of its own with that many
    torch threads (CPU trainings side by side); either way its output is streamed into the run
    log."""
    cfg = from_dict(TrainConfig, cfg_dict)
    logger = get_run_logger()
    progress = _Progress(Path(cfg.out_dir).name)
    if gpus > 1 or threads is not None:
        config_file = write_launch_config(cfg)
        cmd = torchrun_command(config_file, gpus) if gpus > 1 else train_command(config_file)
        logger.info("launching: %s", " ".join(cmd))

        def on_line(line: str) -> None:
            logger.info("%s", line)
            progress(line)

        stream_command(cmd, on_line, "torchrun" if gpus > 1 else "training",
                       env=None if threads is None else {"OMP_NUM_THREADS": str(threads)})
        # The finished run's state holds its result: train() returns it at once without training.
        return jsonable(train(cfg))
    with _library_logs_to(logger, progress):
        return jsonable(train(cfg))


# ---------------------------------------------------------------------------- evaluation


@task(name="evaluate-models")
def evaluate_task(
    checkpoints: dict[str, str], eval_cfg: dict[str, Any], out_dir: str, mlflow_run_id: str | None,
    metric_prefix: str = "eval", method: str | None = None,
) -> dict[str, Any]:
    """``snapper.evaluation.evaluate.evaluate`` (identity + every model on the same boxes); logs to the
    given MLflow run (metrics under ``metric_prefix``, ``method``'s headline numbers
    unprefixed). Returns paths, the flat metrics, each method's score and the Table 1 rows."""
    res = evaluate(checkpoints, from_dict(EvalConfig, eval_cfg), out_dir, include_identity=True)
    if mlflow_run_id:
        tracking.log_evaluation(res.metrics, [*res.files.values(), *res.plots.values()], run_id=mlflow_run_id,
                                prefix=metric_prefix, headline=headline(res.metrics, method) if method else None)
    return {
        "out_dir": res.out_dir,
        "parquet": res.parquet,
        "metrics": jsonable(res.metrics),
        "scores": {m: headline(res.metrics, m).get("score") for m in [*checkpoints, IDENTITY]},
        "table_md": res.table_md,
        "rows": table_rows(jsonable(res.summary)),
        "plots": jsonable(res.plots),
        "files": jsonable(res.files),
    }


# ---------------------------------------------------------------------------- the flow


def _train_both(edges_cfg: TrainConfig, reg_cfg: TrainConfig | None,
                gpus: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The model and (optionally) its regression baseline. On CPU they train side by side, a
    process each with half the cores (small convolutions scale far better across processes
    than across threads); otherwise one after the other."""
    threads = torch_threads_side_by_side(edges_cfg.device) if reg_cfg is not None and gpus == 0 else None
    if threads is not None and edges_cfg.mlflow:
        tracking.ensure_experiment(edges_cfg.experiment)  # once, before two processes would race to create it
    edges_f = train_task.submit(to_dict(edges_cfg), gpus, threads)
    reg_f = (train_task.with_options(name="train-regression-baseline").submit(to_dict(reg_cfg), gpus, threads)
             if reg_cfg is not None else None)
    edges = edges_f.result()
    get_run_logger().info("model trained: %s steps, best checkpoint %s", edges["steps"], edges["best_checkpoint"])
    return edges, (reg_f.result() if reg_f is not None else None)


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


def _version_tags(metrics: dict[str, Any], ctx: dict[str, Any]) -> dict[str, str]:
    """The model's scores (``snapper.all.*``) and provenance as model-version tags."""
    tags = {k.replace("/", "."): f"{v:.4g}" for k, v in metrics.items()
            if k.startswith("snapper/all/") and isinstance(v, (int, float))}
    tags.update({"dataset": ctx["data"], "preset": ctx["preset"], "steps": str(ctx["steps"])})
    tags.update({k: v for k, v in (("prefect.flow_run_id", ctx.get("flow_run_id")),
                                   (tracking.PREFECT_LINK_TAG, ctx.get("flow_run_url"))) if v})
    return tags


def _eval_set(ev: dict[str, Any], ctx: dict[str, Any]) -> str:
    boxes = next((r["boxes"] for r in ev["rows"] if r["method"] == IDENTITY and r["size"] == "all"), "?")
    return f"{ctx['data']} held-out split ({boxes} boxes)"


def _register_and_report(ctx: dict[str, Any], ev: dict[str, Any], champion: dict[str, Any] | None,
                         model_name: str | None) -> dict[str, Any] | None:
    """Register (when ``model_name``), challenge the champion, describe, report, log the links."""
    logger = get_run_logger()
    run_id = ctx["mlflow_run_id"]
    registered = check = None
    if model_name and run_id:
        version = register_task(run_id, ctx["best_checkpoint"], model_name, _version_tags(ev["metrics"], ctx))
        check = champion_check_task(model_name, version, ev["scores"], champion, _eval_set(ev, ctx))
        registered = {"name": model_name, "version": version, "champion": check["holds"],
                      "champion_check": check["reason"]}
    elif model_name:
        logger.warning("MLflow tracking is off for this run (mlflow=false): nothing to register")
    if run_id:
        describe_task(ctx, ev, check)
    report_task(ctx, ev, check)
    link = tracking.run_link(run_id, mlflow_ui())
    if run_id:
        logger.info("MLflow run: %s", link or f"{run_id} in the local store (browse it with `make mlflow-ui`)")
    if registered:
        logger.info("registered model: %s version %d (%s)", model_name, registered["version"],
                    "the champion" if registered["champion"] else f"not champion: {registered['champion_check']}")
    return registered


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
    registered_model: str = DEFAULT_MODEL_NAME,
    runs_dir: str = "runs",
) -> dict[str, Any]:
    """Train a Snapper model (and the regression baseline), evaluate both against the rough
    boxes, register the model (champion only if it beats the current one on the same boxes),
    and publish Table 1. Smoke presets (``cpu-tiny``) register under ``snapper-ci``.

    ``preset``: a :data:`snapper.training.presets.PRESETS` name; ``overrides``: TrainConfig keys (e.g.
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

    # 2. training: the model and (optionally) the regression baseline
    runs = resolve(runs_dir)
    base = _base_config(preset, overrides, shards, gpus)
    edges_cfg = dataclasses.replace(base, out_dir=str(runs / name), run_name=base.run_name or name)
    reg_cfg = None
    if regression_baseline:
        reg_cfg = override(regression_baseline_config(edges_cfg), regression_overrides)
        reg_cfg = dataclasses.replace(reg_cfg, out_dir=str(runs / f"{name}-regression"),
                                      run_name=f"{edges_cfg.run_name}-regression")
    edges, regression = _train_both(edges_cfg, reg_cfg, gpus)
    checkpoints = {"snapper": edges["best_checkpoint"]}
    if regression is not None:
        checkpoints["regression"] = regression["best_checkpoint"]

    # 3. evaluation on the held-out shards: identity, the models and the current champion, same boxes
    run_id = edges.get("mlflow_run_id")
    model_name = model_name_for(preset, registered_model) if register_model else None
    if model_name and model_name != registered_model:
        logger.info("preset %s is a smoke test: registering under %r, never %r", preset, model_name, registered_model)
    champion = champion_task(model_name, run_id) if model_name and run_id else None
    if champion and champion.get("checkpoint"):
        checkpoints[CHAMPION_METHOD] = champion["checkpoint"]
    eval_cfg = override(EvalConfig(shards=shards["val"], device=base.device), eval_overrides)
    ev = evaluate_task(checkpoints, to_dict(eval_cfg), str(runs / name / "eval"), run_id,
                       metric_prefix="val/eval", method="snapper")
    logger.info("Table 1 on %d held-out shard(s):\n%s", len(shards["val"]), ev["table_md"].split("\n## By")[0])

    # 4. registration, champion check, descriptions and the report
    data = synthetic_name(num_images, seed) if dataset == SYNTHETIC and not (ann_file or train_shards) else dataset
    registered = _register_and_report(flow_context(name, data, preset, edges), ev, champion, model_name)
    return {
        "name": name,
        "train": edges,
        "regression": regression,
        "eval": {k: ev[k] for k in ("out_dir", "parquet", "table_md", "files", "plots")},
        "registered": registered,
        "mlflow_run_id": run_id,
        "mlflow_run_url": tracking.run_link(run_id, mlflow_ui()),
        "mlflow_runs_url": _runs_link(run_id),
    }


def _runs_link(run_id: str | None) -> str | None:
    """The experiment's runs list with the Table 1 view, when an MLflow UI is known."""
    ui = mlflow_ui()
    if not run_id or not ui:
        return None
    return tracking.experiment_link(tracking.mlflow_client().get_run(run_id).info.experiment_id, ui)


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
    print(where_next(res))
    return 0


def where_next(res: dict[str, Any]) -> str:
    """Where to look after a run: the MLflow run, the per-box Parquet, the registered version."""
    lines = ["Where to look next:", f"  per-box table (Parquet): {res['eval']['parquet']}"]
    if res.get("mlflow_run_url"):
        lines.append(f"  MLflow run:    {res['mlflow_run_url']}")
        lines.append(f"  all runs:      {res.get('mlflow_runs_url')}")
    elif res.get("mlflow_run_id"):
        lines.append(f"  MLflow run:    {res['mlflow_run_id']} in the local store; `make mlflow-ui`, then open "
                     "http://127.0.0.1:5000 (experiment 'snapper', view 'Table 1')")
    reg = res.get("registered")
    if reg:
        verdict = ("now the champion: `make serve` serves it" if reg["champion"]
                   else f"not champion ({reg['champion_check']})")
        lines.append(f"  registered:    models:/{reg['name']}/{reg['version']}, {verdict}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
