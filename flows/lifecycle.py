"""The model's life after training in ``train-snapper``: register it, challenge the champion,
describe it in MLflow, and publish the report in Prefect.

* **Register** under the production name, or under :data:`snapper.mlops.registry.CI_MODEL_NAME`
  for smoke presets (:func:`snapper.mlops.registry.model_name_for`); a re-run reuses its version.
* **Champion**: the current champion was evaluated on the same boxes as the new model
  (method ``champion`` of the evaluation), so the comparison is like for like;
  :func:`snapper.mlops.registry.decide_champion` decides, the version's tags record it, and only a
  win moves the alias.
* **Describe**: the version and the MLflow run get a markdown description (data, preset,
  steps, Table 1 row, champion check) with links to each other and to the Prefect flow run.
* **Report**: Prefect artifacts keyed per run name: Table 1 (markdown, every size bucket),
  the same as a table with the paper's column names, and a link to the MLflow run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.common import artifact_key, flow_run_link, mlflow_ui
from snapper.mlops import tracking
from snapper.mlops.registry import (
    CHAMPION_ALIAS,
    alias_version,
    decide_champion,
    describe_version,
    record_champion_check,
    register_checkpoint,
    resolve_model,
    version_of_run,
)

TABLE_KEY = "snapper-table1"
ROWS_KEY = "snapper-table1-rows"
LINK_KEY = "snapper-mlflow-run"
CHAMPION_METHOD = "champion"  # the method name of the current champion in the evaluation


def keys(name: str) -> dict[str, str]:
    """The Prefect artifact keys of run ``name`` (one set per model)."""
    return {"table": artifact_key(TABLE_KEY, name), "rows": artifact_key(ROWS_KEY, name),
            "link": artifact_key(LINK_KEY, name)}


# ---------------------------------------------------------------------------- registry


@task(name="find-champion")
def champion_task(name: str, run_id: str | None) -> dict[str, Any] | None:
    """The current champion of ``name`` and its checkpoint (to evaluate it on the same boxes);
    None when there is none. A champion made by this very run is not evaluated twice."""
    mv = alias_version(name, CHAMPION_ALIAS)
    if mv is None:
        return None
    info: dict[str, Any] = {"version": int(mv.version), "run_id": mv.run_id}
    if mv.run_id and mv.run_id == run_id:
        return info
    try:
        info["checkpoint"] = str(resolve_model(f"models:/{name}/{mv.version}"))
    except (OSError, ValueError, LookupError) as e:
        get_run_logger().warning("champion %s version %s cannot be loaded (%s): it will not be challenged",
                                 name, mv.version, e)
        info["error"] = str(e)
    return info


@task(name="register-model")
def register_task(run_id: str, checkpoint: str, name: str, tags: dict[str, str]) -> int:
    """``snapper.mlops.registry.register_checkpoint``; a re-run of the same MLflow run reuses its version."""
    existing = version_of_run(name, run_id)
    if existing is not None:
        get_run_logger().info("run %s is already registered as %s version %d", run_id, name, existing)
        return existing
    return register_checkpoint(run_id, checkpoint, name, tags=tags)


@task(name="challenge-champion")
def champion_check_task(name: str, version: int, scores: dict[str, float | None], champion: dict[str, Any] | None,
                        eval_set: str) -> dict[str, Any]:
    """Decide and record whether ``version`` takes the champion alias (see the module doc)."""
    champ_version = champion["version"] if champion else None
    champ_score = scores.get(CHAMPION_METHOD)
    check = decide_champion(name, version, float(scores["snapper"] or 0.0), eval_set, champ_version, champ_score,
                            float(scores["identity"] or 0.0))
    record_champion_check(check)
    get_run_logger().info("%s", check.line())
    return dataclasses.asdict(check)


# ---------------------------------------------------------------------------- descriptions


def _row_text(row: dict[str, Any] | None) -> str:
    if not row:
        return "-"
    return ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("method", "size") and v is not None)


def _table1_row(ev: dict[str, Any], method: str) -> dict[str, Any] | None:
    return next((r for r in ev["rows"] if r["method"] == method and r["size"] == "all"), None)


def _champion_text(check: dict[str, Any] | None) -> str:
    if not check:
        return "not registered"
    verdict = "**became champion**" if check["promoted"] else "**the champion**" if check["holds"] else "not promoted"
    return f"`{check['name']}` version {check['version']}: {verdict} ({check['reason']})"


def version_description(ctx: dict[str, Any], ev: dict[str, Any], check: dict[str, Any] | None) -> str:
    """The model version's description: where it came from, its Table 1 row, the champion check."""
    run_id = ctx["mlflow_run_id"]
    mlflow_link = tracking.run_link(run_id, mlflow_ui())
    prefect = f"[{ctx['flow_run_id']}]({ctx['flow_run_url']})" if ctx.get("flow_run_url") else ctx.get("flow_run_id")
    return "\n".join([
        f"Trained by train-snapper `{ctx['name']}`: data `{ctx['data']}`, preset `{ctx['preset']}`, "
        f"{ctx['steps']} steps.",
        "",
        f"Table 1 on the held-out split: {_row_text(_table1_row(ev, 'snapper'))}",
        f"(rough boxes: {_row_text(_table1_row(ev, 'identity'))}).",
        "",
        f"Champion check: {_champion_text(check)}.",
        "",
        f"MLflow run: {f'[{run_id}]({mlflow_link})' if mlflow_link else f'`{run_id}`'}; "
        f"Prefect flow run: {prefect or 'none'}.",
    ])


def run_description(ctx: dict[str, Any], ev: dict[str, Any], check: dict[str, Any] | None) -> str:
    """The MLflow run's description: the same facts, with the registered version."""
    prefect = f"[{ctx['flow_run_id']}]({ctx['flow_run_url']})" if ctx.get("flow_run_url") else ctx.get("flow_run_id")
    return "\n".join([
        f"train-snapper `{ctx['name']}`: data `{ctx['data']}`, preset `{ctx['preset']}`, {ctx['steps']} steps.",
        "",
        f"Held-out Table 1: {_row_text(_table1_row(ev, 'snapper'))}.",
        "",
        f"Registered: {_champion_text(check)}.",
        "",
        f"Prefect flow run: {prefect or 'none (run outside Prefect)'}.",
    ])


@task(name="describe-model")
def describe_task(ctx: dict[str, Any], ev: dict[str, Any], check: dict[str, Any] | None) -> None:
    """Descriptions and links on the MLflow run and the model version."""
    tags = {k: v for k, v in (("prefect.flow_run_id", ctx.get("flow_run_id")),
                              (tracking.PREFECT_LINK_TAG, ctx.get("flow_run_url"))) if v}
    tracking.describe_run(ctx["mlflow_run_id"], run_description(ctx, ev, check), tags)
    if check:
        describe_version(check["name"], check["version"], version_description(ctx, ev, check))


# ---------------------------------------------------------------------------- report


def report_markdown(ctx: dict[str, Any], ev: dict[str, Any], check: dict[str, Any] | None) -> str:
    run_id = ctx.get("mlflow_run_id")
    ui = mlflow_ui()
    link = tracking.run_link(run_id, ui)
    if not run_id:
        where = "not tracked"
    elif link:
        where = f"[{run_id}]({link})"
    else:
        where = f"`{run_id}` in the local store: `make mlflow-ui`, then open the `snapper` experiment"
    return "\n".join([
        f"# train-snapper: {ctx['name']}",
        "",
        f"- MLflow run: {where}",
        f"- registered model: {_champion_text(check)}",
        f"- data `{ctx['data']}`, preset `{ctx['preset']}`, {ctx['steps']} steps; best checkpoint "
        f"`{ctx.get('best_checkpoint')}`",
        f"- per-box table: `{ev['parquet']}`",
        "",
        ev["table_md"],
    ])


@task(name="publish-report")
def report_task(ctx: dict[str, Any], ev: dict[str, Any], check: dict[str, Any] | None) -> str:
    name, run_id = ctx["name"], ctx.get("mlflow_run_id")
    k = keys(name)
    md = report_markdown(ctx, ev, check)
    create_markdown_artifact(key=k["table"], markdown=md,
                             description=f"Table 1 of {name}: every method on the same held-out boxes, overall "
                                         "and per COCO size bucket (percent; higher is better)")
    create_table_artifact(key=k["rows"], table=ev["rows"],
                          description=f"Table 1 of {name} as a table: one row per method and size bucket (percent)")
    link = tracking.run_link(run_id, mlflow_ui())
    if link:
        create_link_artifact(key=k["link"], link=link, link_text=f"MLflow run {run_id}",
                             description=f"The MLflow run of {name}: curves, parameters, plots, the per-box Parquet")
    return md


def flow_context(name: str, data: str, preset: str, edges: dict[str, Any]) -> dict[str, Any]:
    """What descriptions and reports say about this run (small, JSON)."""
    flow_run_id, flow_run_url = flow_run_link()
    return {"name": name, "data": data, "preset": preset, "steps": edges.get("steps"),
            "best_checkpoint": edges.get("best_checkpoint"), "mlflow_run_id": edges.get("mlflow_run_id"),
            "flow_run_id": flow_run_id, "flow_run_url": flow_run_url}
