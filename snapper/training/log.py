"""The training log: loss/throughput windows, ``history.jsonl`` and the ``step N/M`` line.

One row per ``log_every`` steps goes to ``<out_dir>/history.jsonl`` (and MLflow) and to the
log line ``step N/M loss ...``, for people. Programs read progress from
:mod:`snapper.training.progress`, never from the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from snapper.atomic import atomic_write_text

HISTORY_FILE = "history.jsonl"
STEP_LINE = "step %d/%d loss %.4f lr %.3g %.1f samples/s eta %s"


def write_history(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    """Rewrite the whole file (on a (re)start: rows past the saved step are dropped)."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def append_history(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    # An append, not an atomic rewrite: a kill can at worst cut the last line, and the next
    # start rewrites the file from the saved state anyway.
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class LossWindow:
    """Loss and samples since the last log line.

    The loss stays on the device between log lines: no host sync per step on CUDA. Time spent
    in validation and checkpoints (:meth:`paused`) does not count against the throughput.
    """

    def __init__(self, device: torch.device, start_step: int):
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        self.loss = torch.zeros((), device=device, dtype=dtype)
        self.n, self.samples, self.t0 = 0, 0, time.perf_counter()
        self.run_t0, self.run_start_step = self.t0, start_step

    def add(self, loss: torch.Tensor, samples: int) -> None:
        self.loss += loss.detach()
        self.n += 1
        self.samples += samples

    def mean_loss(self) -> float:
        return float(self.loss) / self.n

    def rate(self, world_size: int) -> float:
        """Samples per second over all ranks in this window."""
        return self.samples * world_size / max(time.perf_counter() - self.t0, 1e-9)

    def eta(self, step: int, total: int) -> float:
        per_step = (time.perf_counter() - self.run_t0) / max(step - self.run_start_step, 1)
        return per_step * (total - step)

    def reset(self) -> None:
        self.loss.zero_()
        self.n, self.samples, self.t0 = 0, 0, time.perf_counter()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t0 += time.perf_counter() - t0
