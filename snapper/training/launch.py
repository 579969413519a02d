"""Start multi-process (DDP) training from Python: torchrun in a subprocess.

A process that wants N GPUs cannot become N processes itself; it writes the config beside
the run and starts ``torchrun --standalone --nproc_per_node=N -m snapper.cli train --config
<yaml>``, passing every output line to a callback (the flow streams them into its log).
The finished run's result is then read back with :func:`snapper.training.loop.train`, which returns
a finished run at once. The same goes for two CPU trainings side by side (the model and its
regression baseline), each a process with half the cores: small convolutions scale poorly
across threads of one process and almost perfectly across processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch

from snapper.atomic import atomic_write_text
from snapper.config import TrainConfig
from snapper.overrides import dump_yaml

LAUNCH_CONFIG_FILE = "flow-train-config.yaml"  # beside the run, so the launch can be repeated by hand
TAIL_LINES = 40  # output lines quoted in the error when torchrun fails


def write_launch_config(cfg: TrainConfig) -> Path:
    return atomic_write_text(Path(cfg.out_dir) / LAUNCH_CONFIG_FILE, dump_yaml(cfg))


def torchrun_command(config_file: str | os.PathLike[str], nproc: int) -> list[str]:
    """The torchrun of this interpreter's environment (``python -m torch.distributed.run``
    when the ``torchrun`` script is not beside it)."""
    launcher = Path(sys.executable).parent / "torchrun"
    head = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return [*head, "--standalone", f"--nproc_per_node={nproc}", "-m", "snapper.cli", "train",
            "--config", str(config_file)]


def torch_threads_side_by_side(device: str, n: int = 2) -> int | None:
    """Torch threads for each of ``n`` CPU trainings run side by side, or None when they
    should not be (a GPU device, or fewer cores than trainings)."""
    cores = os.cpu_count() or 1
    if device not in ("auto", "cpu") or cores < n or (device == "auto" and torch.cuda.is_available()):
        return None
    return max(1, cores // n)


def train_command(config_file: str | os.PathLike[str]) -> list[str]:
    """One training in its own process (this interpreter): ``snapper train --config FILE``."""
    return [sys.executable, "-m", "snapper.cli", "train", "--config", str(config_file)]


def stream_command(cmd: list[str], on_line: Callable[[str], None], what: str = "torchrun",
                   env: dict[str, str] | None = None) -> None:
    """Run ``cmd`` (with ``env`` added to this environment), handing each output line (stdout
    and stderr) to ``on_line``; a non-zero exit raises with the last lines of output."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with subprocess.Popen(  # noqa: S603 - argv list, no shell
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            on_line(line)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"{what} exited with {code}; last lines:\n" + "\n".join(tail))
