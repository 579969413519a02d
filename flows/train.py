"""Flow ``train-snapper``: data -> train -> (regression baseline) -> evaluate -> register -> report.

Wiring only: every task calls one library function and hands the next one paths and small
JSON. Configuration comes from :mod:`snapper.training.presets` plus a small ``overrides`` dict
(dotted or nested keys, validated by :func:`snapper.overrides.apply_overrides`).

* **Data** (:mod:`flows.data`): generated and sharded on first use, or shards as they are.
* **Training**: in-process (CPU or one GPU); ``gpus > 1`` runs torchrun in a subprocess
  (:mod:`snapper.training.launch`), and on CPU the model and its regression baseline train
  side by side, a process each. Either way the log is streamed into the flow run and the
  progress artifact follows the run's ``progress.json`` (:mod:`snapper.training.progress`).
* **Evaluation** scores the rough boxes (identity), the model, the regression baseline and
  the current champion on the same held-out boxes (:mod:`snapper.training.publish`).
* **Registration** after evaluation, the one registration path (:mod:`snapper.mlops.lifecycle`):
  champion only when the model beats the current one. **Report**: Prefect artifacts with
  Table 1 and the MLflow run (:mod:`flows.lifecycle`).

Run once locally with an ephemeral Prefect server: ``python -m flows.train`` (what ``make
demo`` does). Deployed: ``prefect deployment run 'train-snapper/demo'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run as current_flow_run

from flows.common import (
    SYNTHETIC,
    ProgressArtifact,
    artifact_key,
    jsonable,
    library_logs_to,
    mlflow_ui,
    override,
    resolve,
    synthetic_name,
)
from flows.data import flow_shards
from flows.lifecycle import (
    CHAMPION_METHOD,
    champion_task,
    flow_context,
    nest_baseline,
    register_task,
    report_task,
)
from flows.runners import task_runner_from_env
from snapper.config import EvalConfig, TrainConfig
from snapper.errors import ConfigError
from snapper.mlops import tracking
from snapper.mlops.lifecycle import where_next
from snapper.mlops.registry import model_name_for
from snapper.models.reference import MODEL_NAME
from snapper.overrides import from_dict, to_dict
from snapper.training.launch import (
    stream_command,
    torch_threads_side_by_side,
    torchrun_command,
    train_command,
    write_launch_config,
)
from snapper.training.loop import train
from snapper.training.presets import preset_config
from snapper.training.presets import regression_baseline as regression_baseline_config
from snapper.training.progress import watch_progress
from snapper.training.publish import EVAL_DIR, evaluate_models, registration_eval_config
from snapper.training.state import STATE_FILE, check_resumable, finished_conflicts, load_state

PROGRESS_KEY = "snapper-train-progress"


# ---------------------------------------------------------------------------- training


@task(name="train-model")
def train_task(cfg_dict: dict[str, Any], gpus: int = 0, threads: int | None = None) -> dict[str, Any]:
    """Train one model (``snapper.training.loop.train``); returns the TrainResult as JSON.

    ``gpus > 1``: torchrun in a subprocess; ``threads``: a process of its own with that many
    torch threads (CPU trainings side by side); either way its output is streamed into the run
    log. Progress comes from the run's ``progress.json`` in every case."""
    cfg = from_dict(TrainConfig, cfg_dict)
    logger = get_run_logger()
    label = Path(cfg.out_dir).name
    progress = ProgressArtifact(artifact_key(PROGRESS_KEY, label), f"Training progress of {label} (percent of its steps)")
    with watch_progress(cfg.out_dir, progress):
        if gpus <= 1 and threads is None:
            with library_logs_to(logger):
                return jsonable(train(cfg))
        config_file = write_launch_config(cfg)
        cmd = torchrun_command(config_file, gpus) if gpus > 1 else train_command(config_file)
        logger.info("launching: %s", " ".join(cmd))
        stream_command(cmd, lambda line: logger.info("%s", line), "torchrun" if gpus > 1 else "training",
                       env=None if threads is None else {"OMP_NUM_THREADS": str(threads)})
    # The finished run's state holds its result: train() returns it at once without training.
    return jsonable(train(cfg))


@task(name="evaluate-models")
def evaluate_task(
    checkpoints: dict[str, str], eval_cfg: dict[str, Any], out_dir: str, mlflow_run_id: str | None,
    metric_prefix: str = "eval", method: str | None = None,
) -> dict[str, Any]:
    """:func:`snapper.training.publish.evaluate_models` (identity + every model on the same boxes)."""
    return evaluate_models(checkpoints, from_dict(EvalConfig, eval_cfg), out_dir, mlflow_run_id,
                           metric_prefix=metric_prefix, method=method)


# ---------------------------------------------------------------------------- the flow


def _train_both(edges_cfg: TrainConfig, reg_cfg: TrainConfig | None,
                gpus: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The model and (optionally) its regression baseline. On CPU they train side by side, a
    process each with half the cores (small convolutions scale far better across processes
    than across threads); otherwise one after the other."""
    threads = torch_threads_side_by_side(edges_cfg.device) if reg_cfg is not None and gpus == 0 else None
    if threads is not None and edges_cfg.tracking.enabled:
        tracking.ensure_experiment(edges_cfg.tracking.experiment)  # once, before two processes race to create it
    edges_f = train_task.submit(to_dict(edges_cfg), gpus, threads)
    reg_f = (train_task.with_options(name="train-regression-baseline").submit(to_dict(reg_cfg), gpus, threads)
             if reg_cfg is not None else None)
    edges = edges_f.result()
    get_run_logger().info("model trained: %s steps, best checkpoint %s", edges["steps"], edges["best_checkpoint"])
    regression = reg_f.result() if reg_f is not None else None
    nest_baseline(edges, regression)  # one row per training in MLflow: the baseline under its model's run
    return edges, regression


def _base_config(preset: str, overrides: dict[str, Any] | None, shards: dict[str, list[str]], gpus: int) -> TrainConfig:
    """preset -> overrides -> what this flow decides: data, registration (later, after evaluation)."""
    base = override(preset_config(preset), overrides)
    base = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, train_shards=shards["train"], val_shards=shards["val"]),
        tracking=dataclasses.replace(base.tracking, registered_model=None),  # the flow registers, after evaluation
    )
    if gpus == 1 and base.device == "auto":
        base = dataclasses.replace(base, device="cuda")
    return base


def _run_configs(base: TrainConfig, runs: Path, name: str, regression_overrides: dict[str, Any] | None,
                 regression: bool) -> tuple[TrainConfig, TrainConfig | None]:
    """The model's config (``<runs>/<name>``) and its regression baseline's (``-regression``)."""
    run_name = base.tracking.run_name or name
    edges_cfg = dataclasses.replace(base, out_dir=str(runs / name),
                                    tracking=dataclasses.replace(base.tracking, run_name=run_name))
    if not regression:
        check_resume(edges_cfg)
        return edges_cfg, None
    reg_cfg = override(regression_baseline_config(edges_cfg), regression_overrides)
    reg_cfg = dataclasses.replace(reg_cfg, out_dir=str(runs / f"{name}-regression"),
                                  tracking=dataclasses.replace(reg_cfg.tracking, run_name=f"{run_name}-regression"))
    check_resume(edges_cfg, reg_cfg)
    return edges_cfg, reg_cfg


def _run_folder(runs_dir: str, name: str | None, preset: str) -> tuple[Path, str]:
    """``runs_dir`` (relative to the project home) and the run's name: ``name`` when given
    (resume or reuse that run), else a fresh one (:func:`fresh_run_name`)."""
    runs = resolve(runs_dir)
    run = name or fresh_run_name(runs, preset)
    get_run_logger().info("run folder: %s (%s)", runs / run,
                          "as named" if name else f"a fresh run; resume or reuse it with name={run}")
    return runs, run


def fresh_run_name(runs: Path, preset: str) -> str:
    """A run folder of its own for a flow run that names none: ``<preset>-<flow run name>``
    (``demo-crafty-lemur``: the name the flow run has in Prefect's UI), with the flow run id's
    start added when an earlier run took that name. A fixed default would make every later
    run of a deployment resume (or silently reuse) the first one; resuming is explicit."""
    stem = artifact_key(preset, current_flow_run.get_name() or time.strftime("%Y%m%d-%H%M%S"))
    if not (runs / stem).exists() and not (runs / f"{stem}-regression").exists():
        return stem
    return artifact_key(stem, (current_flow_run.get_id() or f"{time.time_ns():x}")[:8])


def check_resume(*cfgs: TrainConfig | None) -> None:
    """Refuse, before anything trains, a run folder that cannot do what this flow run asks: a
    saved run of another model, or a finished run asked for other settings (it would train
    nothing and the flow run would end "Completed" all the same). One line, naming the keys."""
    for cfg in cfgs:
        state = load_state(cfg.out_dir) if cfg is not None else None
        if cfg is None or state is None:
            continue
        try:
            check_resumable(cfg, state, Path(cfg.out_dir) / STATE_FILE)
        except ConfigError as e:
            raise ConfigError(f"{e} (leave out `name` for a fresh run)") from None
        conflicts = finished_conflicts(cfg, state) if state.finished else {}
        if conflicts:
            asked = ", ".join(f"{k}={new!r} (the run has {old!r})" for k, (old, new) in conflicts.items())
            raise ConfigError(f"{cfg.out_dir} finished at step {state.step}; this flow run asks for {asked}, and "
                              "a finished run trains no further: leave out `name` for a fresh run, or give a new one")


@flow(name="train-snapper", task_runner=task_runner_from_env())
def train_snapper(
    name: str | None = None,
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
    registered_model: str = MODEL_NAME,
    runs_dir: str = "runs",
) -> dict[str, Any]:
    """Train a Snapper model (and the regression baseline), evaluate both against the rough
    boxes, register the model (champion only if it beats the current one on the same boxes),
    and publish Table 1. Smoke presets (``cpu-tiny``) register under ``snapper-ci``.

    ``preset``: a :data:`snapper.training.presets.PRESETS` name; ``overrides``: TrainConfig keys (e.g.
    ``{"steps": 200, "model.trunk": "resnet50"}``), ``regression_overrides`` on top for the
    baseline; ``eval_overrides``: EvalConfig keys. Outputs: ``<runs_dir>/<name>`` (project home);
    no ``name``: a fresh run; the name of an earlier run resumes it (or reuses it, finished).
    """
    logger = get_run_logger()
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")
    # 1. data
    shards = flow_shards(train_shards, val_shards, dataset=dataset, ann_file=ann_file, images_dir=images_dir,
                         num_images=num_images, val_fraction=val_fraction, shard_size=shard_size, seed=seed)
    logger.info("data: %d train shard(s), %d val shard(s)", len(shards["train"]), len(shards["val"]))

    # 2. training: the model and (optionally) the regression baseline
    runs, name = _run_folder(runs_dir, name, preset)
    base = _base_config(preset, overrides, shards, gpus)
    edges_cfg, reg_cfg = _run_configs(base, runs, name, regression_overrides, regression_baseline)
    edges, regression = _train_both(edges_cfg, reg_cfg, gpus)
    checkpoints = {"snapper": edges["best_checkpoint"], **({"regression": regression["best_checkpoint"]}
                                                           if regression is not None else {})}

    # 3. evaluation on the held-out shards: identity, the models and the current champion, same boxes
    run_id = edges.get("mlflow_run_id")
    model_name = model_name_for(preset, registered_model) if register_model else None
    if model_name and model_name != registered_model:
        logger.info("preset %s is a smoke test: registering under %r, never %r", preset, model_name, registered_model)
    champion = champion_task(model_name, run_id) if model_name and run_id else None
    if champion and champion.get("checkpoint"):
        checkpoints[CHAMPION_METHOD] = champion["checkpoint"]
    eval_cfg = override(registration_eval_config(base, shards["val"]), eval_overrides)
    ev = evaluate_task(checkpoints, to_dict(eval_cfg), str(runs / name / EVAL_DIR), run_id,
                       metric_prefix="val/eval", method="snapper")
    logger.info("Table 1 on %d held-out shard(s):\n%s", len(shards["val"]), ev["table_md"].split("\n## By")[0])

    # 4. registration, champion check, descriptions and the report
    data = synthetic_name(num_images, seed) if dataset == SYNTHETIC and not (ann_file or train_shards) else dataset
    ctx = flow_context(name, data, preset, edges, shards)
    out = register_task(ctx, ev, champion, model_name)
    report_task(ctx, ev, out["check"])
    registered, link = out["registered"], tracking.run_link(run_id, mlflow_ui())
    if run_id:
        logger.info("MLflow run: %s", link or f"{run_id} in the local store (browse it with `make mlflow-ui`)")
    if registered:
        logger.info("registered model: %s version %d (%s)", registered["name"], registered["version"],
                    "the champion" if registered["champion"] else f"not champion: {registered['champion_check']}")
    return {
        "name": name,
        "train": edges,
        "regression": regression,
        "eval": {k: ev[k] for k in ("out_dir", "parquet", "table_md", "files", "plots")},
        "registered": registered,
        "mlflow_run_id": run_id,
        "mlflow_run_url": link,
        "mlflow_runs_url": tracking.runs_link(run_id, mlflow_ui()),
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m flows.train", description="Run the train-snapper flow once.")
    ap.add_argument("--name", help="the run folder runs/NAME: an earlier run's name resumes (or reuses) it; "
                                    "default: a fresh run, <preset>-<flow run name>")
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
    try:
        res = train_snapper(name=args.name, preset=args.preset, overrides=overrides or None,
                            regression_baseline=not args.no_regression, gpus=args.gpus, num_images=args.num_images,
                            dataset=args.dataset, ann_file=args.ann_file, images_dir=args.images_dir,
                            val_fraction=args.val_fraction)
    except ConfigError as e:  # a run folder that cannot do what was asked (check_resume): one line
        ap.exit(2, f"{ap.prog}: {e}\n")
    print("\n" + res["eval"]["table_md"])
    print(where_next(res))
    print(f"  run folder:    {res['train']['out_dir']} (resume or reuse it: --name {res['name']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
