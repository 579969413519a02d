"""Prefect flows over the :mod:`snapper` library.

Importing the package sets the offline defaults the flows run with (an already-set variable
wins), before any flow module imports Prefect: no telemetry, and a temporary Prefect server
given the time it needs to start on a slow machine. ``make`` and ``flows.stack`` set the same.
"""

import os

OFFLINE_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_CLI_PROMPT": "false",
}
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)
