"""After training: evaluate on the held-out shards, then register (:mod:`snapper.mlops.lifecycle`).

A model is registered only once it has been scored, and it becomes champion only when it
beats the current one on the same boxes. The ``train-snapper`` flow runs these steps as its
own tasks (with the regression baseline in the same table); ``snapper train`` runs them in
one call, :func:`evaluate_and_register`. Training itself never registers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from snapper.config import EvalConfig, SnapSettings, TrainConfig
from snapper.evaluation.evaluate import IDENTITY, evaluate
from snapper.evaluation.metrics import HARM_COLUMNS, TABLE1_COLUMNS
from snapper.lineage import shard_lineage
from snapper.mlops import tracking
from snapper.mlops.lifecycle import (
    CHAMPION_METHOD,
    find_champion,
    register_evaluated,
    run_context,
)
from snapper.mlops.registry import model_name_for
from snapper.training.validation import validation_score

log = logging.getLogger(__name__)

EVAL_DIR = "eval"  # <out_dir>/eval: the evaluation that decided the registration


def registration_eval_config(cfg: TrainConfig, shards: list[str]) -> EvalConfig:
    """How a trained model is scored before it is registered: the paper's jitter on the
    held-out shards, on the training device."""
    return EvalConfig(shards=list(shards), snap=SnapSettings(device=cfg.device))


def headline(metrics: Mapping[str, Any], method: str) -> dict[str, float]:
    """``method``'s Table 1 (overall) and validation score, named as
    :data:`snapper.mlops.tracking.HEADLINE_METRICS`, from an evaluation's flat metrics."""
    out = {m: float(metrics[f"{method}/all/{m}"]) for m in tracking.HEADLINE_METRICS
           if f"{method}/all/{m}" in metrics}
    if {"edge_lt_1px", "iou_gt_0.9"} <= out.keys():
        out["score"] = validation_score({f"all/{k}": v for k, v in out.items()})
    return out


def table_rows(rows: list[dict[str, Any]], digits: int = 1) -> list[dict[str, Any]]:
    """Summary rows (one per method and size bucket) with the paper's column names and the share
    of boxes made worse, rounded."""
    out = []
    for r in rows:
        row: dict[str, Any] = {"method": r.get("method"), "size": r.get("size"), "boxes": int(r.get("n_boxes", 0))}
        for key, header in {**TABLE1_COLUMNS, **HARM_COLUMNS}.items():
            value = r.get(key)
            row[header] = None if value is None else round(float(value), digits)
        out.append(row)
    return out


def jsonable(obj: Any) -> Any:
    """Paths -> str, dataclasses/DataFrames -> plain JSON, numpy scalars -> numbers."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):  # pandas DataFrame
        return jsonable(obj.to_dict(orient="records"))
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    return obj


def evaluate_models(checkpoints: dict[str, str], eval_cfg: EvalConfig, out_dir: str | os.PathLike[str],
                    mlflow_run_id: str | None, metric_prefix: str = "eval",
                    method: str | None = None) -> dict[str, Any]:
    """:func:`snapper.evaluation.evaluate.evaluate` (identity + every model on the same boxes),
    logged to the given MLflow run (metrics under ``metric_prefix``, ``method``'s headline
    numbers unprefixed). Returns paths, the flat metrics, each method's score and Table 1
    rows, as JSON (what :func:`snapper.mlops.lifecycle.register_evaluated` reads)."""
    res = evaluate(checkpoints, eval_cfg, out_dir, include_identity=True)
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


def evaluate_and_register(cfg: TrainConfig, best_checkpoint: str | None, mlflow_run_id: str | None,
                          steps: int, preset: str | None = None) -> dict[str, Any] | None:
    """``snapper train``'s registration, the flow's steps in one call: find the champion,
    evaluate the run's best checkpoint next to it on ``data.val_shards``, register, challenge,
    describe. None (and a log line saying why) when there is nothing to register."""
    requested = cfg.tracking.registered_model
    if not requested:
        return None
    why_not = ("MLflow tracking is off (tracking.enabled=false)" if not mlflow_run_id
               else "no validation shards to evaluate it on (data.val_shards)" if not cfg.data.val_shards
               else "no best checkpoint" if not best_checkpoint else None)
    if why_not:
        log.warning("not registering %s: %s", cfg.out_dir, why_not)
        return None
    name = model_name_for(preset, requested)
    champion = find_champion(name, mlflow_run_id)
    checkpoints = {"snapper": str(best_checkpoint)}
    if champion and champion.get("checkpoint"):
        checkpoints[CHAMPION_METHOD] = champion["checkpoint"]
    out = Path(cfg.out_dir)
    ev = evaluate_models(checkpoints, registration_eval_config(cfg, cfg.data.val_shards), out / EVAL_DIR,
                         mlflow_run_id, metric_prefix="val/eval", method="snapper")
    data = Path(str(cfg.data.train_shards[0])).parent.name if cfg.data.train_shards else "-"
    ctx = run_context(out.name, data, preset, steps, best_checkpoint, mlflow_run_id,
                      lineage={**shard_lineage(cfg.data.train_shards, cfg.data.val_shards, data),
                               "parent": cfg.init_from})
    return register_evaluated(ctx, ev, champion, name, tracking.server_url())["registered"]
