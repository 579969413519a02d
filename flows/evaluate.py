"""Flow ``evaluate-snapper``: score a model (registered or a checkpoint) against the rough boxes.

``model`` is anything :func:`snapper.models.reference.resolve_model` accepts: the champion
(``models:/snapper@champion``, the default), ``models:/snapper/3``, a registered name (its latest version),
``runs:/<run id>/model`` or a checkpoint folder. ``baselines`` adds more methods to the same
table (``{"regression": "runs/demo-regression/best"}``). Shards: explicit URLs, or the
``split`` of ``shards/<dataset>``. Results: the per-box Parquet, Table 1 and plots under
``out_dir``, Prefect artifacts, and (``mlflow_run_id``, or a fresh run in ``experiment``) MLflow.

    prefect deployment run 'evaluate-snapper/demo' --param model=models:/snapper/1
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import DEMO_DATASET, artifact_key, flow_run_link, jsonable, mlflow_ui, override, resolve
from flows.data import shard_urls_task
from flows.runners import task_runner_from_env
from flows.train import evaluate_task
from snapper.config import EvalConfig, SnapSettings
from snapper.mlops import tracking
from snapper.models.reference import DEFAULT_MODEL, resolve_model
from snapper.overrides import to_dict

TABLE_KEY = "snapper-eval-table1"


@task(name="resolve-model")
def resolve_task(ref: str) -> str:
    if not ref.startswith(("models:/", "runs:/")) and resolve(ref).exists():
        ref = str(resolve(ref))  # relative checkpoint paths are relative to SNAPPER_HOME, like all others
    return str(resolve_model(ref))


@task(name="start-mlflow-run")
def start_run_task(experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """An MLflow run to hold this evaluation (closed at once; evaluate() logs into it by id)."""
    with tracking.start_run(experiment, run_name=run_name, tags=tags) as run:
        return run.info.run_id


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "model"


@flow(name="evaluate-snapper", task_runner=task_runner_from_env())
def evaluate_snapper(
    model: str = DEFAULT_MODEL,
    method: str = "snapper",
    baselines: dict[str, str] | None = None,
    shards: list[str] | None = None,
    dataset: str = DEMO_DATASET,
    split: str = "val",
    passes: int = 1,
    overrides: dict[str, Any] | None = None,
    include_identity: bool = True,
    out_dir: str | None = None,
    mlflow_run_id: str | None = None,
    experiment: str = "snapper-eval",
) -> dict[str, Any]:
    """Evaluate ``model`` (and ``baselines``) on held-out shards; returns paths, metrics, Table 1.
    ``passes=2`` adds the zoom-in pass (models trained with ``model.zoom``)."""
    logger = get_run_logger()
    urls = list(shards) if shards else shard_urls_task(str(resolve(Path("shards") / dataset)), split)
    checkpoints = {method: resolve_task(model)}
    for name, ref in (baselines or {}).items():
        checkpoints[name] = resolve_task(ref)
    logger.info("evaluating %s on %d shard(s)", checkpoints, len(urls))
    cfg = override(EvalConfig(shards=urls, snap=SnapSettings(passes=passes)), overrides)
    out = resolve(out_dir) if out_dir else resolve(Path("runs") / "eval" / f"{_slug(model)}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_id = mlflow_run_id
    if run_id is None and experiment:
        run_id = start_run_task(experiment, f"eval {model}", {"snapper.model_ref": model, "snapper.shards": dataset})
    ev = evaluate_task(checkpoints, to_dict(cfg), str(out), run_id, method=method)
    link = tracking.run_link(run_id, mlflow_ui())
    where = f"{len(urls)} shard(s)" + ("" if shards else f" of {dataset}/{split}")
    md = "\n".join([
        f"# evaluate-snapper: {model}",
        "",
        "- checkpoints: " + ", ".join(f"{k}: `{v}`" for k, v in checkpoints.items()),
        f"- shards: {where}",
        f"- MLflow run: {f'[{run_id}]({link})' if link else run_id}",
        f"- per-box table: `{ev['parquet']}`",
        "",
        ev["table_md"],
    ])
    key = artifact_key(TABLE_KEY, model)
    create_markdown_artifact(key=key, markdown=md, description=f"Table 1 of {model} on {where}: every method on the "
                                                               "same boxes, overall and per size bucket (percent)")
    create_table_artifact(key=f"{key}-rows", table=ev["rows"],
                          description=f"Table 1 of {model} as a table: one row per method and size bucket (percent)")
    if run_id:
        flow_run_id, flow_run_url = flow_run_link()
        prefect = f"[{flow_run_id}]({flow_run_url})" if flow_run_url else (flow_run_id or "none")
        tracking.describe_run(run_id, f"evaluate-snapper: `{model}` on {where}.\n\nPrefect flow run: {prefect}.",
                              {k: v for k, v in (("prefect.flow_run_id", flow_run_id),
                                                 (tracking.PREFECT_LINK_TAG, flow_run_url)) if v})
        logger.info("MLflow run: %s", link or f"{run_id} in the local store (browse it with `make mlflow-ui`)")
    return {"checkpoints": checkpoints, "mlflow_run_id": run_id, **jsonable(ev)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.evaluate", description="Run the evaluate-snapper flow once.")
    ap.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="registered name, models:/ URI or checkpoint folder")
    ap.add_argument("--dataset", default=DEMO_DATASET, help="a folder under shards/")
    ap.add_argument("--split", default="val")
    ap.add_argument("--baseline", action="append", default=[], metavar="NAME=REF")
    a = ap.parse_args(argv)
    baselines = dict(b.split("=", 1) for b in a.baseline)
    res = evaluate_snapper(model=a.model, dataset=a.dataset, split=a.split, baselines=baselines or None)
    print(res["table_md"])
    print(f"per-box table: {res['parquet']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
