"""Training progress as data: ``<out_dir>/progress.json``, and a callback.

Rank 0 of :func:`snapper.training.loop.train` rewrites the file (atomically) at every log
line, after every validation and when the call ends, and hands the same
:class:`Progress` to ``on_progress`` when one is given. Why a file: a training in another
process (torchrun, or the flow's side-by-side CPU trainings) reports through it exactly as
an in-process one does, so whoever shows progress (the flow's progress artifact,
:func:`watch_progress`) never has to read the log.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapper.atomic import atomic_write_text

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
RUNNING, STOPPED, FINISHED, FAILED = "running", "stopped", "finished", "failed"  # stopped: resumable


@dataclass
class Progress:
    """Where a run stands. ``eta_s``: seconds to ``steps`` at this call's pace so far."""

    step: int
    steps: int
    status: str = RUNNING
    loss: float | None = None
    lr: float | None = None
    samples_per_s: float | None = None
    best_score: float | None = None
    eta_s: float | None = None
    updated: float = field(default_factory=time.time)

    @property
    def percent(self) -> float:
        return min(100.0, max(0.0, 100.0 * self.step / max(self.steps, 1)))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Progress":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


ProgressCallback = Callable[[Progress], None]


def write_progress(out_dir: str | os.PathLike[str], progress: Progress) -> Path:
    return atomic_write_text(Path(out_dir) / PROGRESS_FILE, json.dumps(progress.to_json(), sort_keys=True))


def read_progress(out_dir: str | os.PathLike[str]) -> Progress | None:
    """The run's last reported progress; None before its first report."""
    try:
        return Progress.from_json(json.loads((Path(out_dir) / PROGRESS_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


@contextlib.contextmanager
def watch_progress(out_dir: str | os.PathLike[str], on_progress: ProgressCallback,
                   interval: float = 1.0) -> Iterator[None]:
    """Call ``on_progress`` with each new state of ``<out_dir>/progress.json`` while the body
    runs (a polling thread; the training may be another process), and with the last one at
    the end. A failing callback is logged and ignored: progress must never stop a training."""
    stop = threading.Event()
    seen: list[float | None] = [None]

    def poll() -> None:
        p = read_progress(out_dir)
        if p is None or p.updated == seen[0]:
            return
        seen[0] = p.updated
        try:
            on_progress(p)
        except Exception as e:  # noqa: BLE001 - a nicety, see above
            log.debug("progress callback failed: %s", e)

    def loop() -> None:
        while not stop.wait(interval):
            poll()

    # the caller's context (e.g. the settings of the Prefect run the callback reports to)
    thread = threading.Thread(target=contextvars.copy_context().run, args=(loop,), name="snapper-progress",
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        poll()
