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
from pathlib import Path
from typing import Any, Mapping, TypeVar

from snapper.config import apply_overrides

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
    """Apply a dict of overrides through :func:`snapper.config.apply_overrides`, the one
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
