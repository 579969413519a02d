"""The ``mlflow models serve`` command that serves a registered model on loopback, and its
environment. What the server runs and the request schema: :mod:`snapper.mlops.pyfunc`."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from snapper.imageio import IMAGE_ROOT_ENV

DEFAULT_PORT = 5001
LOOPBACK = "127.0.0.1"


def serve_command(model_uri: str, port: int = DEFAULT_PORT, host: str = LOOPBACK, workers: int = 1,
                  timeout_s: int = 60) -> list[str]:
    """``mlflow models serve`` for ``model_uri`` in this environment (``--env-manager local``)."""
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    return [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "models", "serve", "-m", model_uri,
            "-h", host, "-p", str(port), "-w", str(workers), "-t", str(timeout_s), "--env-manager", "local"]


def serve_env(environ: Mapping[str, str], tracking_uri: str, root: Path | None = None) -> dict[str, str]:
    """The server's environment: this interpreter's bin first on PATH (MLflow starts ``uvicorn``
    by name), the tracking/registry store, telemetry off, and the image folder when allowed."""
    env = dict(environ)
    env.pop("_MLFLOW_SERVER_ARTIFACT_ROOT", None)  # a private hook of snapper.mlops.tracking, not for servers
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "1")
    if root is not None:
        env[IMAGE_ROOT_ENV] = str(root)
    else:
        env.pop(IMAGE_ROOT_ENV, None)
    return env
