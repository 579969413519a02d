"""Choose a Prefect task runner from the environment (or explicit arguments).

Why here and not in the flows: the same flow code runs on a laptop (threads), against a Dask
cluster (``SNAPPER_DASK_ADDRESS=tcp://scheduler:8786``, or ``local`` for a throwaway
``LocalCluster``) or a Ray cluster (``SNAPPER_RAY_ADDRESS``, needs ``pip install
'snapper[ray]'``). The flows call :func:`task_runner_from_env` when they are imported, so a
deployment picks the runner from its worker's / job's environment without code changes::

    prefect deployment run 'shard-coco/coco-train' --job-variable env='{"SNAPPER_DASK_ADDRESS": "tcp://10.0.0.5:8786"}'
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

DASK_ENV = "SNAPPER_DASK_ADDRESS"
RAY_ENV = "SNAPPER_RAY_ADDRESS"
WORKERS_ENV = "SNAPPER_MAX_WORKERS"


def _default_workers() -> int:
    # Shard tasks are I/O plus tar writing; a few threads per core keeps disks busy without
    # oversubscribing small machines.
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


def task_runner_from_env(
    dask_address: str | None = None,
    ray_address: str | None = None,
    max_workers: int | None = None,
) -> Any:
    """Return a task runner: Dask if an address is given (argument or ``SNAPPER_DASK_ADDRESS``),
    else Ray (argument or ``SNAPPER_RAY_ADDRESS``), else a ``ThreadPoolTaskRunner``.

    A Ray address without ``prefect-ray`` installed is an error rather than a silent fallback
    to threads: the user asked for a cluster and would otherwise get a laptop.
    """
    dask_address = dask_address or os.environ.get(DASK_ENV) or None
    ray_address = ray_address or os.environ.get(RAY_ENV) or None
    if dask_address:
        from prefect_dask import DaskTaskRunner

        if dask_address == "local":  # a temporary LocalCluster owned by the flow run
            return DaskTaskRunner()
        return DaskTaskRunner(address=dask_address)
    if ray_address:
        if importlib.util.find_spec("prefect_ray") is None:
            raise RuntimeError(
                f"{RAY_ENV}={ray_address!r} is set but prefect-ray is not installed; "
                "run: pip install -e '.[ray]'"
            )
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=None if ray_address == "local" else ray_address)
    if max_workers is None:
        env = os.environ.get(WORKERS_ENV)
        max_workers = int(env) if env else _default_workers()
    return ThreadPoolTaskRunner(max_workers=max_workers)


def with_task_runner(flow_obj: Any, **kwargs: Any) -> Any:
    """``flow_obj`` with a runner chosen by :func:`task_runner_from_env` (keyword arguments win
    over the environment), e.g. ``with_task_runner(shard_coco, dask_address="tcp://h:8786")(...)``."""
    return flow_obj.with_options(task_runner=task_runner_from_env(**kwargs))


def describe(runner: Any) -> str:
    """One line for logs: which runner and where it points."""
    name = type(runner).__name__
    address = getattr(runner, "address", None) or getattr(runner, "_address", None)
    workers = getattr(runner, "_max_workers", None)
    if address:
        return f"{name}(address={address})"
    if workers:
        return f"{name}(max_workers={workers})"
    return name
