"""A trained model's life once it has been evaluated: register it, challenge the champion,
describe both in MLflow. The one registration path: the ``train-snapper`` flow calls it after
its evaluation, ``snapper train`` through :func:`snapper.training.publish.evaluate_and_register`.

* **Register** under the production name, or under :data:`snapper.mlops.registry.CI_MODEL_NAME`
  for smoke presets (:func:`snapper.mlops.registry.model_name_for`); a re-run of the same
  MLflow run reuses its version.
* **Champion**: the current champion was evaluated on the same boxes as the new model
  (method :data:`CHAMPION_METHOD` of the evaluation), so the comparison is like for like;
  :func:`snapper.mlops.registry.decide_champion` decides, the version's tags record it, and only a
  win moves the alias.
* **Describe**: the version and the MLflow run get a markdown description (data, preset,
  steps, Table 1 row, champion check) with links to each other and to the Prefect flow run.
* **Lineage** (:mod:`snapper.lineage`): the version's tags name its data (``data.name``,
  ``data.kind`` synthetic|real, the manifests' sha256); ``lineage.json`` is written beside the
  checkpoint before it is logged, so the registered model (and the folder) know it too. A
  version carries only the tags a person reads; everything else is the run's JSON artifact
  ``registration/version-<n>.json``.

``ctx`` (:func:`run_context`) and ``ev`` (an evaluation summary: ``metrics``, ``scores`` per
method, Table 1 ``rows``, ``table_md``, ``parquet``) are small JSON, so flows pass them
between tasks as they are.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from snapper import lineage as data_lineage
from snapper.errors import SnapperError
from snapper.evaluation.evaluate import IDENTITY
from snapper.mlops import tracking
from snapper.mlops.registry import (
    CHAMPION_ALIAS,
    MODEL_NAME,
    ChampionCheck,
    alias_version,
    decide_champion,
    describe_version,
    record_champion_check,
    register_checkpoint,
    resolve_registered,
    version_of_run,
)

log = logging.getLogger(__name__)

CHAMPION_METHOD = "champion"  # the method name of the current champion in the evaluation


def run_context(name: str, data: str, preset: str | None, steps: int | None, best_checkpoint: str | None,
                mlflow_run_id: str | None, flow_run_id: str | None = None,
                flow_run_url: str | None = None, lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """What descriptions and reports say about a run (small, JSON); ``lineage`` is
    :func:`snapper.lineage.shard_lineage` of its shards."""
    return {"name": name, "data": data, "preset": preset or "-", "steps": steps,
            "best_checkpoint": best_checkpoint, "mlflow_run_id": mlflow_run_id,
            "flow_run_id": flow_run_id, "flow_run_url": flow_run_url,
            "lineage": lineage or {"dataset": data, "kind": data_lineage.dataset_kind(data) or data_lineage.REAL}}


# ---------------------------------------------------------------------------- registry


def find_champion(name: str, run_id: str | None) -> dict[str, Any] | None:
    """The current champion of ``name`` and its checkpoint (to evaluate it on the same boxes);
    None when there is none. A champion made by this very run is not evaluated twice."""
    mv = alias_version(name, CHAMPION_ALIAS)
    if mv is None:
        return None
    info: dict[str, Any] = {"version": int(mv.version), "run_id": mv.run_id}
    if mv.run_id and mv.run_id == run_id:
        return info
    try:
        info["checkpoint"] = str(resolve_registered(f"models:/{name}/{mv.version}"))
    except (SnapperError, OSError, ValueError, LookupError) as e:  # what a broken version raises
        log.warning("champion %s version %s cannot be loaded (%s): it will not be challenged", name, mv.version, e)
        info["error"] = str(e)
    return info


def register_version(run_id: str, checkpoint: str, name: str, tags: dict[str, str],
                     lineage: dict[str, Any] | None = None) -> int:
    """:func:`snapper.mlops.registry.register_checkpoint` (with ``lineage.json`` written into
    the checkpoint first); a re-run of the same MLflow run reuses its version."""
    existing = version_of_run(name, run_id)
    if existing is not None:
        log.info("run %s is already registered as %s version %d", run_id, name, existing)
        return existing
    if lineage:
        data_lineage.write_sidecar(checkpoint, lineage)
        tracking.log_datasets(run_id, dataset_inputs(lineage))
    return register_checkpoint(run_id, checkpoint, name, tags=tags)


def dataset_inputs(lineage: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The run's datasets: each split's shard manifests (name ``<dataset>/<split>``, digest =
    the manifest's sha256, source = its path), training for train and validation for val."""
    out = []
    for split, context in (("train", "training"), ("val", "validation")):
        for m in (lineage.get(split) or {}).get("manifests", []):
            out.append((f"{lineage.get('dataset', '-')}/{split}", m.get("sha256") or "-", m["path"], context))
    return out


def challenge_champion(name: str, version: int, scores: dict[str, float | None], champion: dict[str, Any] | None,
                       eval_set: str) -> dict[str, Any]:
    """Decide and record whether ``version`` takes the champion alias (see the module doc)."""
    champ_version = champion["version"] if champion else None
    check = decide_champion(name, version, float(scores["snapper"] or 0.0), eval_set, champ_version,
                            scores.get(CHAMPION_METHOD), float(scores[IDENTITY] or 0.0))
    record_champion_check(check)
    log.info("%s", check.line())
    return dataclasses.asdict(check)


def version_tags(metrics: dict[str, Any], ctx: dict[str, Any]) -> dict[str, str]:
    """The few tags a person reads on a version: its data (name, kind, manifest digests),
    preset, mIoU and the Prefect link; the rest is in :func:`registration_record`."""
    lin = ctx.get("lineage") or {}
    miou = metrics.get("snapper/all/miou")
    tags = {"data.name": str(lin.get("dataset") or ctx["data"]), "data.kind": str(lin.get("kind") or "-"),
            "data.train_sha256": data_lineage.digest(lin, "train"), "data.val_sha256": data_lineage.digest(lin, "val"),
            "preset": ctx["preset"]}
    if lin.get("parent"):  # fine-tuned from this model (TrainConfig.init_from)
        tags["parent"] = str(lin["parent"])
    if isinstance(miou, (int, float)):
        tags["miou"] = f"{miou:.2f}"
    if ctx.get("flow_run_url"):
        tags[tracking.PREFECT_LINK_TAG] = ctx["flow_run_url"]
    return tags


def registration_record(ctx: dict[str, Any], ev: dict[str, Any], check: dict[str, Any] | None) -> dict[str, Any]:
    """Everything about a registration that is too long for tags (the run's JSON artifact)."""
    return {"context": ctx, "scores": ev.get("scores"), "table1": ev.get("rows"), "champion_check": check,
            "metrics": {k: v for k, v in ev.get("metrics", {}).items() if k.startswith("snapper/")}}


def eval_set_name(ev: dict[str, Any], ctx: dict[str, Any]) -> str:
    boxes = next((r["boxes"] for r in ev["rows"] if r["method"] == IDENTITY and r["size"] == "all"), "?")
    return f"{ctx['data']} held-out split ({boxes} boxes)"


def register_evaluated(ctx: dict[str, Any], ev: dict[str, Any], champion: dict[str, Any] | None,
                       model_name: str | None, ui: str | None = None) -> dict[str, Any]:
    """Register the evaluated run's best checkpoint as a version of ``model_name`` (None: do
    not register), challenge the champion, describe run and version. Returns ``registered``
    (name, version, champion, champion_check; None when nothing was registered) and
    ``check`` (the champion check as JSON, or None)."""
    run_id = ctx["mlflow_run_id"]
    registered = check = None
    if model_name and run_id:
        version = register_version(run_id, ctx["best_checkpoint"], model_name, version_tags(ev["metrics"], ctx),
                                   ctx.get("lineage"))
        check = challenge_champion(model_name, version, ev["scores"], champion, eval_set_name(ev, ctx))
        tracking.log_json(registration_record(ctx, ev, check), f"registration/version-{version}.json", run_id)
        registered = {"name": model_name, "version": version, "champion": check["holds"],
                      "champion_check": check["reason"]}
        log.info("registered model: %s version %d (%s)", model_name, version,
                 "the champion" if check["holds"] else f"not champion: {check['reason']}")
    elif model_name:
        log.warning("MLflow tracking is off for this run (tracking.enabled=false): nothing to register")
    if run_id:
        describe(ctx, ev, check, ui)
    return {"registered": registered, "check": check}


# ---------------------------------------------------------------------------- descriptions


def _row_text(row: dict[str, Any] | None) -> str:
    if not row:
        return "-"
    return ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("method", "size") and v is not None)


def _table1_row(ev: dict[str, Any], method: str) -> dict[str, Any] | None:
    return next((r for r in ev["rows"] if r["method"] == method and r["size"] == "all"), None)


def champion_text(check: dict[str, Any] | None) -> str:
    if not check:
        return "not registered"
    verdict = "**became champion**" if check["promoted"] else "**the champion**" if check["holds"] else "not promoted"
    return f"`{check['name']}` version {check['version']}: {verdict} ({check['reason']})"


def _prefect_text(ctx: dict[str, Any]) -> str | None:
    return f"[{ctx['flow_run_id']}]({ctx['flow_run_url']})" if ctx.get("flow_run_url") else ctx.get("flow_run_id")


def version_description(ctx: dict[str, Any], ev: dict[str, Any], check: dict[str, Any] | None,
                        ui: str | None = None) -> str:
    """The model version's description: where it came from, its Table 1 row, the champion check."""
    run_id = ctx["mlflow_run_id"]
    mlflow_link = tracking.ui_run_link(run_id, ui)
    return "\n".join([
        f"Trained by train-snapper `{ctx['name']}`: data `{ctx['data']}`, preset `{ctx['preset']}`, "
        f"{ctx['steps']} steps.",
        "",
        data_text(ctx),
        "",
        f"Table 1 on the held-out split: {_row_text(_table1_row(ev, 'snapper'))}",
        f"(rough boxes: {_row_text(_table1_row(ev, IDENTITY))}).",
        "",
        f"Champion check: {champion_text(check)}.",
        "",
        f"MLflow run: {f'[{run_id}]({mlflow_link})' if mlflow_link else f'`{run_id}`'}; "
        f"Prefect flow run: {_prefect_text(ctx) or 'none'}.",
    ])


def data_text(ctx: dict[str, Any]) -> str:
    """The data line of a description: name, kind and the manifests (sha256) of each split."""
    lin = ctx.get("lineage") or {}
    parts = [f"{split} " + ", ".join(f"`{m['path']}` (sha256 `{(m['sha256'] or '?')[:12]}`)"
                                     for m in (lin.get(split) or {}).get("manifests", []))
             for split in ("train", "val") if (lin.get(split) or {}).get("manifests")]
    line = f"Data: `{lin.get('dataset', ctx['data'])}` ({lin.get('kind', '-')})"
    if lin.get("kind") == data_lineage.SYNTHETIC:
        line += " - generated shapes only, not for real photos"
    return line + (": " + "; ".join(parts) if parts else "") + "."


def run_description(ctx: dict[str, Any], ev: dict[str, Any], check: dict[str, Any] | None) -> str:
    """The MLflow run's description: the same facts, with the registered version."""
    return "\n".join([
        f"train-snapper `{ctx['name']}`: data `{ctx['data']}`, preset `{ctx['preset']}`, {ctx['steps']} steps.",
        "",
        f"Held-out Table 1: {_row_text(_table1_row(ev, 'snapper'))}.",
        "",
        f"Registered: {champion_text(check)}.",
        "",
        f"Prefect flow run: {_prefect_text(ctx) or 'none (run outside Prefect)'}.",
    ])


def describe(ctx: dict[str, Any], ev: dict[str, Any], check: dict[str, Any] | None, ui: str | None = None) -> None:
    """Descriptions and links on the MLflow run and the model version."""
    tags = {k: v for k, v in (("prefect.flow_run_id", ctx.get("flow_run_id")),
                              (tracking.PREFECT_LINK_TAG, ctx.get("flow_run_url"))) if v}
    tracking.describe_run(ctx["mlflow_run_id"], run_description(ctx, ev, check), tags)
    if check:
        describe_version(check["name"], check["version"], version_description(ctx, ev, check, ui))


def report_markdown(ctx: dict[str, Any], ev: dict[str, Any], check: dict[str, Any] | None,
                    ui: str | None = None) -> str:
    """The run's report: where it is tracked, what was registered, Table 1."""
    run_id = ctx.get("mlflow_run_id")
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
        f"- registered model: {champion_text(check)}",
        f"- data `{ctx['data']}`, preset `{ctx['preset']}`, {ctx['steps']} steps; best checkpoint "
        f"`{ctx.get('best_checkpoint')}`",
        f"- per-box table: `{ev['parquet']}`",
        "",
        ev["table_md"],
    ])


def where_next(res: dict[str, Any]) -> str:
    """Where to look after a run: the MLflow run, the per-box Parquet, the registered version."""
    lines = ["Where to look next:", f"  per-box table (Parquet): {res['eval']['parquet']}"]
    if res.get("mlflow_run_url"):
        lines.append(f"  MLflow run:    {res['mlflow_run_url']}")
        lines.append(f"  all runs:      {res.get('mlflow_runs_url')}")
    elif res.get("mlflow_run_id"):
        lines.append(f"  MLflow run:    {res['mlflow_run_id']} in the local store; `make mlflow-ui`, then open "
                     "http://127.0.0.1:5000 ('Model training', then the run's experiment, view 'Table 1')")
    reg = res.get("registered")
    if reg:
        serves = ("`make serve` serves it" if reg["name"] == MODEL_NAME
                  else f"snap with --model models:/{reg['name']}@{CHAMPION_ALIAS}")
        verdict = f"now the champion: {serves}" if reg["champion"] else f"not champion ({reg['champion_check']})"
        lines.append(f"  registered:    models:/{reg['name']}/{reg['version']}, {verdict}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- adapted models


def challenge_rivals(name: str, version: int, scores: dict[str, float | None], method: str,
                     rivals: dict[str, str], eval_set: str) -> ChampionCheck:
    """``method`` takes ``name``'s champion alias only when it scores strictly above every rival
    (method -> label) on the same boxes; a rival that could not be scored blocks the move."""
    score = float(scores[method] or 0.0)
    current = alias_version(name, CHAMPION_ALIAS)
    if current is not None and int(current.version) == version:
        return ChampionCheck(name, version, score, "-", None, eval_set, False, "it already is the champion", holds=True)
    missing = [label for m, label in rivals.items() if scores.get(m) is None]
    if missing:
        return ChampionCheck(name, version, score, missing[0], None, eval_set, False,
                             f"{missing[0]} could not be scored on {eval_set}; promote by hand")
    best = max(rivals, key=lambda m: float(scores[m]))  # type: ignore[arg-type]
    rival_score = float(scores[best])  # type: ignore[arg-type]
    better = score > rival_score
    reason = (f"score {score:.2f} vs {rival_score:.2f} for {rivals[best]} on {eval_set}"
              + "".join(f"; {label} {float(scores[m]):.2f}" for m, label in rivals.items() if m != best))  # type: ignore[arg-type]
    return ChampionCheck(name, version, score, rivals[best], rival_score, eval_set, better, reason, holds=better)


def register_adapted(name: str, run_id: str | None, checkpoint: str, ev: dict[str, Any], rivals: dict[str, str],
                     lineage: dict[str, Any], method: str, champion: dict[str, Any] | None) -> dict[str, Any] | None:
    """Register an adapted model (``snapper adapt``) under ``name`` and let it challenge its
    rivals (the base it was fine-tuned from; ``name``'s champion) on the report split. The
    comparison is kept on the version (tags ``champion.*``, description, run artifact)."""
    if not run_id:
        log.warning("MLflow tracking is off for this run: the adapted model is not registered")
        return None
    metrics = {"snapper/all/miou": ev["metrics"].get(f"{method}/all/miou")}
    ctx = {"data": lineage.get("dataset", "-"), "preset": "finetune", "lineage": lineage}
    version = register_version(run_id, checkpoint, name, version_tags(metrics, ctx), lineage)
    boxes = next((r["boxes"] for r in ev["rows"] if r["method"] == IDENTITY and r["size"] == "all"), "?")
    check = challenge_rivals(name, version, ev["scores"], method, rivals, f"the gold report split ({boxes} boxes)")
    record_champion_check(check)  # logs a promotion itself
    if not check.promoted:
        log.info("%s", check.line())
    text = (f"Adapted from `{lineage.get('parent')}` on `{lineage.get('dataset')}` (`snapper adapt`).\n\n"
            f"**Champion check**: {check.line()}\n\n" + ev["table_md"])
    describe_version(name, version, text)
    tracking.log_json({"champion_check": dataclasses.asdict(check), "scores": ev["scores"], "table1": ev["rows"],
                       "lineage": lineage, "previous_champion": champion},
                      f"registration/version-{version}.json", run_id)
    return {"name": name, "version": version, "champion": check.holds, "champion_check": check.reason}
