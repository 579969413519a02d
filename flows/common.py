"""Small helpers shared by the flows: where relative paths live, and config overrides.

Relative paths in flow parameters (``data/synthetic``, ``shards/synthetic``, ``runs/demo``)
are resolved against ``SNAPPER_HOME`` when it is set, else the current directory. Why: a
deployment's flow runs start in the code checkout (the ``set_working_directory`` pull step),
but the local stack may keep its state elsewhere (``python -m flows.stack up --home DIR``,
used by the end-to-end test to keep everything in a temporary folder).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping, TypeVar

from prefect.context import FlowRunContext
from prefect.settings import get_current_settings
from prefect.utilities.urls import url_for

from flows.stack import http_ok, stack_from_args
from snapper.evaluation.metrics import TABLE1_COLUMNS
from snapper.mlops import tracking
from snapper.overrides import apply_overrides
from snapper.training.validation import validation_score

T = TypeVar("T")

HOME_ENV = "SNAPPER_HOME"
REPO = Path(__file__).resolve().parents[1]

# The embedded default dataset: generated on first use, then reused (idempotent).
SYNTHETIC = "synthetic"


def synthetic_name(num_images: int, seed: int) -> str:
    """Folder name (under data/ and shards/) of one synthetic generator setting, so a small CI
    run never replaces the demo's data."""
    return f"{SYNTHETIC}-n{num_images}-s{seed}"


DEMO_DATASET = synthetic_name(300, 0)  # what train-snapper/demo generates


def home() -> Path:
    """Base folder for relative data/shard/run paths."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser().resolve() if env else Path.cwd().resolve()


def resolve(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else home() / p


def flatten(overrides: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"backbone": "resnet18"}, "steps": 5}`` -> ``{"model.backbone": ..., "steps": 5}``.

    Both nested and dotted forms are accepted so a deployment's YAML and a ``--param`` JSON
    string can be written whichever way is shorter.
    """
    out: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def override(cfg: T, overrides: Mapping[str, Any] | None) -> T:
    """Apply a dict of overrides through :func:`snapper.overrides.apply_overrides`, the one
    place that validates keys and types (typed values are checked as they are; strings, as
    from a command line, are cast to the field's type)."""
    items = flatten(overrides)
    return apply_overrides(cfg, items) if items else cfg


def jsonable(obj: Any) -> Any:
    """Paths -> str, dataclasses/DataFrames -> plain JSON, so task results stay small and portable."""
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


# ---------------------------------------------------------------------------- reports and links

MLFLOW_UI_ENV = "SNAPPER_MLFLOW_UI"  # a browser URL of an MLflow UI serving this project's store


def mlflow_ui() -> str | None:
    """An MLflow UI that shows this project's runs: the tracking server, ``$SNAPPER_MLFLOW_UI``,
    or the local stack's server when the store is the stack's own SQLite file; else None."""
    if tracking.server_url():
        return tracking.server_url()
    if os.environ.get(MLFLOW_UI_ENV):
        return os.environ[MLFLOW_UI_ENV].rstrip("/")
    stack = stack_from_args(None)
    if tracking.tracking_uri() == f"sqlite:///{(stack.mlflow_dir / 'mlflow.db').as_posix()}" \
            and (stack.state_dir / "stack.json").is_file() and http_ok(f"{stack.mlflow_url}/health", timeout=1.0):
        return stack.mlflow_url
    return None


def flow_run_link() -> tuple[str | None, str | None]:
    """(id, UI link) of the current Prefect flow run; the link only with a lasting server."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return None, None
    run_id = str(ctx.flow_run.id)
    if not get_current_settings().api.url:  # a temporary server: its pages vanish with the run
        return run_id, None
    try:
        return run_id, url_for(ctx.flow_run)
    except Exception:  # noqa: BLE001 - a link is a nicety
        return run_id, None


def headline(metrics: Mapping[str, Any], method: str) -> dict[str, float]:
    """The run model's Table 1 (overall) and validation score, named as
    :data:`snapper.mlops.tracking.HEADLINE_METRICS`, from an evaluation's flat metrics."""
    out = {m: float(metrics[f"{method}/all/{m}"]) for m in tracking.HEADLINE_METRICS
           if f"{method}/all/{m}" in metrics}
    if {"edge_lt_1px", "iou_gt_0.9"} <= out.keys():
        out["score"] = validation_score({f"all/{k}": v for k, v in out.items()})
    return out


def table_rows(rows: list[dict[str, Any]], digits: int = 1) -> list[dict[str, Any]]:
    """Summary rows (one per method and size bucket) with the paper's column names, rounded."""
    out = []
    for r in rows:
        row: dict[str, Any] = {"method": r.get("method"), "size": r.get("size"), "boxes": int(r.get("n_boxes", 0))}
        for key, header in TABLE1_COLUMNS.items():
            value = r.get(key)
            row[header] = None if value is None else round(float(value), digits)
        out.append(row)
    return out


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from ``parts``."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")[:120] or "snapper"
