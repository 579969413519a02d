"""The project home: where relative data, shard and run paths and the local MLflow store live.

``$SNAPPER_HOME`` when it is set, else the working directory. Why a variable at all: a
deployment's flow runs start in the code checkout, but the local stack may keep its state
elsewhere (``python -m flows.stack up --home DIR``, the end-to-end test's temporary folder).
Read at every call, never cached, so a change between calls is honoured. The one resolver:
the MLflow store (:mod:`snapper.mlops.tracking`), the flows and the stack all ask it.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "SNAPPER_HOME"


def home(default: str | os.PathLike[str] | None = None) -> Path:
    """``$SNAPPER_HOME``, else ``default``, else the working directory (absolute)."""
    base = os.environ.get(HOME_ENV) or default or os.getcwd()
    return Path(base).expanduser().resolve()


def resolve(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when absolute, else relative to :func:`home`."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else home() / p
