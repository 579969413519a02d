"""torchrun from Python: the config beside the run, the command, streamed output."""

from __future__ import annotations

import sys

import pytest

from snapper.config import TrainConfig
from snapper.overrides import load_yaml
from snapper.training.launch import (
    LAUNCH_CONFIG_FILE,
    stream_command,
    torch_threads_side_by_side,
    torchrun_command,
    train_command,
    write_launch_config,
)


def test_launch_config_round_trips(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), lr=1e-3, steps=7)
    path = write_launch_config(cfg)
    assert path == tmp_path / "run" / LAUNCH_CONFIG_FILE
    assert load_yaml(TrainConfig, path) == cfg


def test_torchrun_command():
    cmd = torchrun_command("/x/c.yaml", 4)
    assert cmd[-6:] == ["--nproc_per_node=4", "-m", "snapper.cli", "train", "--config", "/x/c.yaml"]
    assert "--standalone" in cmd


def test_stream_command_passes_lines_and_reports_failure():
    lines: list[str] = []
    stream_command([sys.executable, "-c", "print('a'); import sys; print('b', file=sys.stderr)"], lines.append)
    assert lines == ["a", "b"]
    with pytest.raises(RuntimeError, match=r"torchrun exited with 3; last lines:\nboom"):
        stream_command([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], lambda line: None)


def test_side_by_side_trainings_split_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert torch_threads_side_by_side("cpu") == 4 and torch_threads_side_by_side("cpu", 3) == 2
    assert torch_threads_side_by_side("cuda") is None and torch_threads_side_by_side("cuda:1") is None
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert torch_threads_side_by_side("cpu") is None  # one core: one after the other
    assert train_command("c.yaml")[-4:] == ["snapper.cli", "train", "--config", "c.yaml"]


def test_stream_command_adds_to_the_environment():
    lines: list[str] = []
    stream_command([sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"], lines.append,
                   env={"OMP_NUM_THREADS": "3"})
    assert lines == ["3"]
