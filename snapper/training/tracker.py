"""MLflow for a training run: one run per ``out_dir``, written by rank 0 only.

The run id is kept in the training state, so a resumed run logs into the same MLflow run.
:class:`RunTracker` is a no-op when tracking is off (``tracking.enabled=false``, ranks > 0):
the loop calls it unconditionally. Registering the model is not done here: a model is
registered once it has been evaluated (:mod:`snapper.mlops.lifecycle`).

Metric names follow :mod:`snapper.mlops.tracking`'s grouping: the loop's one-point summaries
``best/*`` and ``last/*`` are logged as ``val/best/*`` and ``val/last/*`` (they are validation
numbers), so MLflow's charts open on the ``train`` and ``val`` curves instead of a wall of
single-point bar charts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from snapper.config import TrainConfig
from snapper.mlops import tracking

SUMMARY_GROUPS = ("best/", "last/")


def grouped_name(key: str) -> str:
    """The MLflow name of a training metric: ``best/*``, ``last/*`` -> ``val/best/*``, ``val/last/*``."""
    return f"val/{key}" if key.startswith(SUMMARY_GROUPS) else key


class RunTracker:
    """MLflow on rank 0 only, through :mod:`snapper.mlops.tracking`; a no-op when disabled."""

    def __init__(self, cfg: TrainConfig, enabled: bool, run_id: str | None):
        self.enabled = enabled
        self.run_id = run_id
        self._ctx: Any = None
        if not enabled:
            return
        tags = {"snapper.out_dir": str(Path(cfg.out_dir).resolve()), "snapper.head": cfg.model.head}
        # Inside a caller's run (a pipeline's), training is a nested run of it.
        nested = tracking.has_active_run()
        self._ctx = tracking.start_run(cfg.tracking.experiment, cfg.tracking.run_name or Path(cfg.out_dir).name, tags,
                                       run_id=run_id, nested=nested)
        run = self._ctx.__enter__()
        self.run_id = run.info.run_id

    def log_config(self, cfg: TrainConfig) -> None:
        if self.enabled:
            tracking.log_config(cfg)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled and metrics:
            tracking.log_metrics({grouped_name(k): v for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        if self.enabled:
            tracking.log_artifact(path, artifact_path)

    def close(self, failed: bool = False) -> None:
        """End the run, FAILED when training raised (so the MLflow UI does not show it running)."""
        if self._ctx is not None:
            exc = (RuntimeError, RuntimeError("training failed"), None) if failed else (None, None, None)
            self._ctx.__exit__(*exc)
            self._ctx = None
