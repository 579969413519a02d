"""The model's life after training in ``train-snapper``, as Prefect tasks over
:mod:`snapper.mlops.lifecycle` (register, challenge the champion, describe: the one
registration path, shared with ``snapper train``), and the report published in Prefect:
artifacts keyed per run name with Table 1 (markdown, every size bucket), the same as a
table with the paper's column names, and a link to the MLflow run.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from flows.common import artifact_key, flow_run_link, mlflow_ui
from snapper.lineage import shard_lineage
from snapper.mlops import lifecycle, tracking

TABLE_KEY = "snapper-table1"
ROWS_KEY = "snapper-table1-rows"
LINK_KEY = "snapper-mlflow-run"
CHAMPION_METHOD = lifecycle.CHAMPION_METHOD


def keys(name: str) -> dict[str, str]:
    """The Prefect artifact keys of run ``name`` (one set per model)."""
    return {"table": artifact_key(TABLE_KEY, name), "rows": artifact_key(ROWS_KEY, name),
            "link": artifact_key(LINK_KEY, name)}


@task(name="find-champion")
def champion_task(name: str, run_id: str | None) -> dict[str, Any] | None:
    return lifecycle.find_champion(name, run_id)


@task(name="register-model")
def register_task(ctx: dict[str, Any], ev: dict[str, Any], champion: dict[str, Any] | None,
                  model_name: str | None) -> dict[str, Any]:
    """:func:`snapper.mlops.lifecycle.register_evaluated`: register, challenge, describe."""
    return lifecycle.register_evaluated(ctx, ev, champion, model_name, mlflow_ui())


@task(name="publish-report")
def report_task(ctx: dict[str, Any], ev: dict[str, Any], check: dict[str, Any] | None) -> str:
    name, run_id = ctx["name"], ctx.get("mlflow_run_id")
    k = keys(name)
    ui = mlflow_ui()
    md = lifecycle.report_markdown(ctx, ev, check, ui)
    create_markdown_artifact(key=k["table"], markdown=md,
                             description=f"Table 1 of {name}: every method on the same held-out boxes, overall "
                                         "and per COCO size bucket (percent; higher is better)")
    create_table_artifact(key=k["rows"], table=ev["rows"],
                          description=f"Table 1 of {name} as a table: one row per method and size bucket (percent)")
    link = tracking.run_link(run_id, ui)
    if link:
        create_link_artifact(key=k["link"], link=link, link_text=f"MLflow run {run_id}",
                             description=f"The MLflow run of {name}: curves, parameters, plots, the per-box Parquet")
    return md


def flow_context(name: str, data: str, preset: str, edges: dict[str, Any],
                 shards: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """:func:`snapper.mlops.lifecycle.run_context` of this flow run, with the lineage of its
    ``shards`` (:func:`snapper.lineage.shard_lineage`)."""
    flow_run_id, flow_run_url = flow_run_link()
    lineage = shard_lineage(shards["train"], shards["val"], data) if shards else None
    return lifecycle.run_context(name, data, preset, edges.get("steps"), edges.get("best_checkpoint"),
                                 edges.get("mlflow_run_id"), flow_run_id, flow_run_url, lineage)


def nest_baseline(edges: dict[str, Any], regression: dict[str, Any] | None) -> None:
    """The regression baseline's MLflow run as a child of its model's run (one row per training)."""
    parent, child = edges.get("mlflow_run_id"), (regression or {}).get("mlflow_run_id")
    if parent and child and parent != child:
        tracking.nest_run(child, parent)
