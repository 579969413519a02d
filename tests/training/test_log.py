"""history.jsonl, the step line, progress as data (not parsed from the log), and the loss window."""

from __future__ import annotations

import torch

from snapper.training.log import (
    STEP_LINE,
    LossWindow,
    append_history,
    fmt_duration,
    read_history,
    write_history,
)
from snapper.training.progress import Progress


def test_history_rewrite_then_append(tmp_path):
    path = tmp_path / "history.jsonl"
    write_history(path, [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    append_history(path, {"step": 3, "loss": 1.0})
    assert [r["step"] for r in read_history(path)] == [1, 2, 3]
    write_history(path, [])  # a fresh start empties it
    assert read_history(path) == []


def test_progress_is_data_not_a_log_line():
    line = STEP_LINE % (50, 200, 0.5, 1e-3, 10.0, fmt_duration(3725))
    assert line.startswith("step 50/200 loss 0.5000")  # for people; programs read Progress
    assert Progress(step=50, steps=200).percent == 25.0
    assert Progress(step=200, steps=200).percent == 100.0
    assert Progress(step=3, steps=0).percent == 100.0  # never a division by zero
    assert fmt_duration(3725) == "1:02:05" and fmt_duration(-4) == "0:00:00"


def test_loss_window_mean_and_reset():
    w = LossWindow(torch.device("cpu"), start_step=10)
    w.add(torch.tensor(1.0), 8)
    w.add(torch.tensor(3.0), 8)
    assert w.mean_loss() == 2.0 and w.samples == 16 and w.rate(world_size=2) > 0
    assert w.eta(12, 12) == 0.0
    t0 = w.t0
    with w.paused():
        pass
    assert w.t0 >= t0  # paused time is taken out of the window
    w.reset()
    assert w.n == 0 and w.samples == 0 and float(w.loss) == 0.0
