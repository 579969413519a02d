"""Training runs end to end: checkpoints, resumability (in-process stop and SIGKILL), MLflow,
early stopping. The pieces have their own tests (test_schedule, test_train_state, ...)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

import snapper.training.loop as T
from snapper.config import TrainConfig
from snapper.models.checkpoint import load_checkpoint
from snapper.overrides import load_yaml, to_dict
from snapper.training.loop import train
from snapper.training.progress import read_progress
from snapper.training.publish import evaluate_and_register
from snapper.training.schedule import lr_at
from snapper.training.state import STATE_FILE, load_state
from tests.helpers import make_tiny_shards, tiny_train_config

REPO = Path(__file__).resolve().parents[2]




@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("data"))


def history(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "history.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------- training


def test_train_writes_checkpoints_state_and_mlflow(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("SNAPPER_HOME", str(tmp_path))
    out = tmp_path / "run"
    cfg = tiny_train_config(shards, out, steps=4, ckpt_every=2, eval_every=2,
                            tracking={"enabled": True, "registered_model": "tiny-test", "experiment": "test-train"})
    reported = []
    res = train(cfg, on_progress=reported.append)

    assert res.steps == 4
    for d in (res.last_checkpoint, res.best_checkpoint):
        model, mcfg, meta = load_checkpoint(d)
        assert mcfg == cfg.model and meta["step"] in (2, 4)
    losses = [r["loss"] for r in history(out)]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert load_yaml(TrainConfig, out / "config.yaml") == cfg

    state = torch.load(out / STATE_FILE, weights_only=True)  # must not need pickle
    assert state["step"] == 4 and state["finished"] and state["config"] == to_dict(cfg)
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng", "best_score"}
    assert res.final_metrics["best/score"] == pytest.approx(res.best_score)

    run = mlflow.MlflowClient().get_run(res.mlflow_run_id)
    assert run.data.params["model.trunk"] == "resnet18"
    assert {"train/loss", "train/lr", "val/score", "val/best/score"} <= set(run.data.metrics)  # grouped (train_tracker)
    # Training registers nothing; the one registration path comes after evaluation.
    assert not mlflow.MlflowClient().search_model_versions("name='tiny-test'")
    registered = evaluate_and_register(cfg, res.best_checkpoint, res.mlflow_run_id, res.steps)
    assert registered is not None and registered["version"] is not None
    # Progress as data: the file (any process can read it) and the callback agree.
    assert reported[0].step == 0 and reported[0].status == "running"
    assert sorted({p.step for p in reported if p.loss is not None}) == [1, 2, 3, 4]
    assert reported[-1].status == "finished" and reported[-1].percent == 100.0
    assert read_progress(out) == reported[-1] and read_progress(out).best_score == res.best_score

    # A finished run re-run does nothing and reports the same result.
    mtime = (out / STATE_FILE).stat().st_mtime_ns
    again = train(cfg)
    again_registered = evaluate_and_register(cfg, again.best_checkpoint, again.mlflow_run_id, again.steps)
    assert again.steps == 4 and again_registered["version"] == registered["version"]
    assert again.weights_digest == res.weights_digest
    assert (out / STATE_FILE).stat().st_mtime_ns == mtime


def test_resume_continues_the_same_schedule(shards, tmp_path):
    """Run A: 8 steps at once. Run B: 4 steps, stop, resume to 8 (stream reseeded).
    Compared: the step count and the LR at every step exactly; losses loosely (B's data after
    the resume differ from A's by design)."""
    n = 8
    no_val = {"val_shards": []}
    a = train(tiny_train_config(shards, tmp_path / "a", steps=n, warmup_steps=3, lr=3e-3, data=no_val))
    cfg_b = tiny_train_config(shards, tmp_path / "b", steps=n, warmup_steps=3, lr=3e-3, data=no_val)
    half = train(cfg_b, max_steps_this_run=n // 2)
    assert half.steps == n // 2 and not load_state(tmp_path / "b").finished
    b = train(cfg_b)
    assert a.steps == b.steps == n
    ha, hb = history(tmp_path / "a"), history(tmp_path / "b")
    assert [r["step"] for r in hb] == list(range(1, n + 1))  # every step once, none replayed
    for ra, rb in zip(ha, hb):
        assert rb["lr"] == pytest.approx(lr_at(cfg_b, rb["step"] - 1), rel=1e-12)
        assert rb["lr"] == pytest.approx(ra["lr"], rel=1e-12)
    # Before the stop the runs are identical (same seed, same data); after it, close.
    for ra, rb in zip(ha[: n // 2], hb[: n // 2]):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)
    post_a = sum(r["loss"] for r in ha[n // 2:]) / (n // 2)
    post_b = sum(r["loss"] for r in hb[n // 2:]) / (n // 2)
    assert abs(post_a - post_b) < 0.25 * ha[0]["loss"]
    # The resumed model kept learning: its losses are below the untrained start.
    assert post_b < hb[0]["loss"]


@pytest.mark.slow
def test_resume_after_sigkill(shards, tmp_path):
    """A real kill: the CLI in a subprocess is SIGKILLed after its first checkpoint; the
    resumed run ends at exactly ``steps`` with an intact state and one history row per step."""
    n = 16
    cfg = tiny_train_config(shards, tmp_path / "k", steps=n, ckpt_every=2, data={"val_shards": []})
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "snapper.cli", "train", "--config", str(cfg_file)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_file = tmp_path / "k" / STATE_FILE
    deadline = time.time() + 120
    while not state_file.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = load_state(tmp_path / "k").step
    assert 0 < killed_at < n
    res = train(cfg)
    assert res.steps == n and load_state(tmp_path / "k").finished
    assert [r["step"] for r in history(tmp_path / "k")] == list(range(1, n + 1))
    assert all(math.isfinite(r["loss"]) for r in history(tmp_path / "k"))


def test_early_stopping_keeps_best(shards, tmp_path, monkeypatch):
    scores = iter([50.0, 40.0, 45.0, 60.0])  # best at the 1st evaluation, then two worse ones

    def fake_validation(model, cfg, device):
        s = next(scores)
        return {"all/edge_lt_1px": s, "all/iou_gt_0.9": s, "all/miou": s, "score": s}

    monkeypatch.setattr(T, "run_validation", fake_validation)
    cfg = tiny_train_config(shards, tmp_path / "es", steps=20, eval_every=1, patience=2)
    res = train(cfg)
    assert res.stopped_early and res.steps == 3 and res.best_score == 50.0
    assert json.loads((tmp_path / "es" / "best" / "config.json").read_text())["step"] == 1
    assert load_state(tmp_path / "es").finished
    assert train(cfg).steps == 3  # an early-stopped run is finished: re-running does nothing


def test_bad_resume_is_refused(shards, tmp_path):
    out = tmp_path / "r"
    train(tiny_train_config(shards, out, steps=2, eval_every=100))
    other = tiny_train_config(shards, out, steps=2, eval_every=100, model={"input_size": 48})
    with pytest.raises(ValueError, match="different model config"):
        train(other)
