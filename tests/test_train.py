"""Training: checkpoints, resumability (in-process stop and SIGKILL), MLflow, presets, CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import make_tiny_shards, tiny_train_config

from snapper.checkpoint import load_checkpoint  # noqa: E402
from snapper.config import TrainConfig, load_yaml, to_dict  # noqa: E402
from snapper.train import (  # noqa: E402
    PRESETS, STATE_FILE, build_config, cli_main, derive_seed, load_state, lr_at, lr_factor, preset_config,
    rng_state, set_rng_state, train,
)

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("data"))


def history(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "history.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------- pure parts


def test_lr_schedule_warmup_then_cosine_to_zero():
    f = [lr_factor(s, 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:9], f[1:10]))  # warm-up rises
    assert all(a >= b for a, b in zip(f[9:], f[10:]))  # cosine falls
    assert lr_factor(100, 10, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)


def test_stream_reseeded_on_resume():
    assert derive_seed(7, 0) == 7  # a fresh run keeps the configured seed
    seeds = {derive_seed(7, s) for s in (0, 100, 200, 300)}
    assert len(seeds) == 4 and derive_seed(7, 100) == derive_seed(7, 100)


def test_rng_state_is_weights_only_safe(tmp_path):
    import random

    import numpy as np

    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(state, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    set_rng_state(loaded)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_presets_and_override_order(tmp_path):
    for name in PRESETS:
        assert isinstance(preset_config(name), TrainConfig)
    assert preset_config("gpu").model.backbone == "resnet50"
    assert preset_config("cpu").model.backbone == "resnet18" and preset_config("cpu").batch_size == 32
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"batch_size": 5, "model": {"input_size": 64}}))
    cfg = build_config("cpu", str(f), ["model.input_size=96", "model.head=regression"], str(tmp_path / "o"))
    assert cfg.batch_size == 5  # YAML over preset
    assert cfg.model.input_size == 96 and cfg.model.head == "regression"  # --set over YAML
    assert cfg.model.fpn_channels == PRESETS["cpu"]["model"]["fpn_channels"]  # preset kept where not overridden
    assert cfg.out_dir == str(tmp_path / "o")
    with pytest.raises(ValueError, match="unknown"):
        build_config(None, None, ["model.nope=1"])


# ---------------------------------------------------------------------------------- training


def test_train_writes_checkpoints_state_and_mlflow(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("SNAPPER_HOME", str(tmp_path))
    out = tmp_path / "run"
    cfg = tiny_train_config(shards, out, steps=4, ckpt_every=2, eval_every=2, mlflow=True,
                            registered_model="tiny-test", experiment="test-train")
    res = train(cfg)

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

    import mlflow

    run = mlflow.MlflowClient().get_run(res.mlflow_run_id)
    assert run.data.params["model.backbone"] == "resnet18"
    assert {"train/loss", "train/lr", "val/score", "best/score"} <= set(run.data.metrics)
    assert res.registered_version is not None

    # A finished run re-run does nothing and reports the same result.
    mtime = (out / STATE_FILE).stat().st_mtime_ns
    again = train(cfg)
    assert again.steps == 4 and again.registered_version == res.registered_version
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
    assert half.steps == n // 2 and not load_state(tmp_path / "b")["finished"]
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
    killed_at = load_state(tmp_path / "k")["step"]
    assert 0 < killed_at < n
    res = train(cfg)
    assert res.steps == n and load_state(tmp_path / "k")["finished"]
    assert [r["step"] for r in history(tmp_path / "k")] == list(range(1, n + 1))
    assert all(math.isfinite(r["loss"]) for r in history(tmp_path / "k"))


def test_early_stopping_keeps_best(shards, tmp_path, monkeypatch):
    import snapper.train as T

    scores = iter([50.0, 40.0, 45.0, 60.0])  # best at the 1st evaluation, then two worse ones

    def fake_validation(model, cfg, device):
        s = next(scores)
        return {"all/edge_lt_1px": s, "all/iou_gt_0.9": s, "all/miou": s, "score": s}

    monkeypatch.setattr(T, "run_validation", fake_validation)
    cfg = tiny_train_config(shards, tmp_path / "es", steps=20, eval_every=1, patience=2)
    res = train(cfg)
    assert res.stopped_early and res.steps == 3 and res.best_score == 50.0
    assert json.loads((tmp_path / "es" / "best" / "config.json").read_text())["step"] == 1
    assert load_state(tmp_path / "es")["finished"]
    assert train(cfg).steps == 3  # an early-stopped run is finished: re-running does nothing


def test_regression_head_trains_from_the_cli(shards, tmp_path, capsys):
    out = tmp_path / "reg"
    rc = cli_main(["--preset", "cpu-tiny", "--set", "model.head=regression", "--set", "model.input_size=32",
                   "--set", f"data.train_shards={json.dumps(shards['train'])}",
                   "--set", f"data.val_shards={json.dumps(shards['val'])}", "--set", "steps=3",
                   "--set", "eval_every=3", "--set", "mlflow=false", "--set", "device=cpu", "--out-dir", str(out)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 3
    model, mcfg, _ = load_checkpoint(result["best_checkpoint"])
    assert mcfg.head == "regression" and type(model).__name__ == "RegressionNet"


def test_bad_resume_is_refused(shards, tmp_path):
    out = tmp_path / "r"
    train(tiny_train_config(shards, out, steps=2, eval_every=100))
    other = tiny_train_config(shards, out, steps=2, eval_every=100, model={"input_size": 48})
    with pytest.raises(ValueError, match="different model config"):
        train(other)


def test_cli_refuses_a_config_without_data(tmp_path, capsys):
    assert cli_main(["--preset", "cpu-tiny", "--out-dir", str(tmp_path / "x")]) == 2
    assert "train_shards is empty" in capsys.readouterr().err
    assert cli_main(["--preset", "cpu-tiny", "--set", "steps=0"]) == 2
    assert not (tmp_path / "x").exists()
