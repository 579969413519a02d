"""Small helpers shared by the flows: where relative paths live, config overrides, the
library's log and progress shown in the flow run.

Relative paths in flow parameters (``data/synthetic``, ``shards/synthetic``, ``runs/demo``)
are resolved against the project home, :func:`snapper.home.home` (``$SNAPPER_HOME`` when it
is set, else the current directory).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Mapping, TypeVar

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from prefect.settings import get_current_settings
from prefect.utilities.urls import url_for

from flows.stack import http_ok, stack_from_args
from snapper.home import HOME_ENV, home, resolve  # noqa: F401  (the flows' one resolver)
from snapper.mlops import tracking
from snapper.overrides import apply_overrides
from snapper.training.progress import Progress
from snapper.training.publish import jsonable  # noqa: F401  (task results as JSON)

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]

# The embedded default dataset: generated on first use, then reused (idempotent).
SYNTHETIC = "synthetic"


def synthetic_name(num_images: int, seed: int) -> str:
    """Folder name (under data/ and shards/) of one synthetic generator setting, so a small CI
    run never replaces the demo's data."""
    return f"{SYNTHETIC}-n{num_images}-s{seed}"


DEMO_DATASET = synthetic_name(300, 0)  # what train-snapper/demo generates


def flatten(overrides: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"trunk": "resnet18"}, "steps": 5}`` -> ``{"model.trunk": ..., "steps": 5}``.

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


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from ``parts``."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")[:120] or "snapper"


# ---------------------------------------------------------------------------- library output in the run


class _ForwardToRun(logging.Handler):
    """Copies library log records (``snapper.*``) into the Prefect run log."""

    def __init__(self, logger: Any):
        super().__init__(logging.INFO)
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._logger.log(record.levelno, "%s: %s", record.name, record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never break training
            self.handleError(record)


@contextlib.contextmanager
def library_logs_to(logger: Any) -> Iterator[None]:
    """Route the library's ``logging`` ("snapper.*") into the run log (shown in the UI)
    instead of letting it reach the console a second time through the root logger."""
    lib_logger = logging.getLogger("snapper")
    handler = _ForwardToRun(logger)
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


class ProgressArtifact:
    """A Prefect progress artifact fed with :class:`snapper.training.progress.Progress`
    (updated at most once per percent)."""

    def __init__(self, key: str, description: str):
        self._last = -1.0
        try:
            self._id = create_progress_artifact(0.0, key=key, description=description)
        except Exception:  # noqa: BLE001 - progress is a nicety, not a reason to fail
            self._id = None

    def __call__(self, progress: Progress) -> None:
        pct = progress.percent
        if self._id is None or (pct - self._last < 1.0 and pct < 100.0):
            return
        self._last = pct
        try:
            update_progress_artifact(self._id, pct)
        except Exception:  # noqa: BLE001
            pass
