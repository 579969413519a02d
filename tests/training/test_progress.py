"""Training progress as data: ``progress.json`` written atomically, read by anyone, watched."""

from __future__ import annotations

import json
import threading
import time

from snapper.training.progress import (
    PROGRESS_FILE,
    Progress,
    read_progress,
    watch_progress,
    write_progress,
)


def test_write_then_read_round_trips(tmp_path):
    assert read_progress(tmp_path) is None  # before the first report
    p = Progress(step=5, steps=20, loss=0.5, best_score=42.0, eta_s=12.0)
    write_progress(tmp_path, p)
    assert read_progress(tmp_path) == p and read_progress(tmp_path).percent == 25.0
    data = json.loads((tmp_path / PROGRESS_FILE).read_text())
    data["from_a_later_version"] = 1  # unknown keys are ignored
    (tmp_path / PROGRESS_FILE).write_text(json.dumps(data))
    assert read_progress(tmp_path) == p
    (tmp_path / PROGRESS_FILE).write_text("{not json")
    assert read_progress(tmp_path) is None


def test_watch_sees_another_writer_and_the_last_state(tmp_path):
    seen: list[Progress] = []

    def trainer() -> None:  # stands in for a torchrun process writing the file
        for step in range(1, 4):
            write_progress(tmp_path, Progress(step=step, steps=3, status="running" if step < 3 else "finished"))
            time.sleep(0.05)

    with watch_progress(tmp_path, seen.append, interval=0.01):
        t = threading.Thread(target=trainer)
        t.start()
        t.join()
    assert seen and seen[-1].step == 3 and seen[-1].status == "finished"
    assert [p.step for p in seen] == sorted(p.step for p in seen)  # in order, each state once
    assert len({p.updated for p in seen}) == len(seen)


def test_a_failing_callback_never_stops_the_body(tmp_path):
    def broken(p: Progress) -> None:
        raise RuntimeError("artifact service down")

    write_progress(tmp_path, Progress(step=1, steps=2))
    with watch_progress(tmp_path, broken, interval=0.01):
        time.sleep(0.03)
    # reached: the body ran and the watcher stopped cleanly
