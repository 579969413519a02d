"""The command that serves a registered model on loopback (uvicorn on MLflow's scoring app,
:mod:`snapper.mlops.scoring_app`) and its environment. The request schema:
:mod:`snapper.mlops.pyfunc`."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from snapper.imageio import IMAGE_ROOT_ENV
from snapper.mlops import scoring_app
from snapper.mlops.scoring_app import DEFAULT_MAX_BODY, MAX_BODY_ENV, MODEL_PATH_ENV

DEFAULT_PORT = 5001
LOOPBACK = "127.0.0.1"
SCORING_APP = scoring_app.__name__  # by name: uvicorn imports it in each worker


def serve_command(port: int = DEFAULT_PORT, host: str = LOOPBACK, workers: int = 1, timeout_s: int = 60) -> list[str]:
    """uvicorn on :mod:`snapper.mlops.scoring_app` (MLflow's scoring app with a body limit) in
    this interpreter; the model and the limit travel in :func:`serve_env`."""
    return [sys.executable, "-m", "uvicorn", "--host", host, "--port", str(port), "--workers", str(workers),
            "--timeout-graceful-shutdown", str(timeout_s), "--no-access-log", f"{SCORING_APP}:app"]


def serve_env(environ: Mapping[str, str], tracking_uri: str, root: Path | None = None, model_path: str | None = None,
              max_body_bytes: int = DEFAULT_MAX_BODY, timeout_s: int = 60) -> dict[str, str]:
    """The server's environment: the local model folder, the body limit and request timeout, this
    interpreter's bin first on PATH, the tracking/registry store, telemetry off, and the image
    folder when allowed."""
    env = dict(environ)
    if model_path is not None:
        env[MODEL_PATH_ENV] = str(model_path)
    env[MAX_BODY_ENV] = str(int(max_body_bytes))
    env["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(int(timeout_s))
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
