"""train_state.pt: RNG capture, weights-only round trip, and which runs may be resumed."""

from __future__ import annotations

import dataclasses
import json
import logging
import random

import numpy as np
import pytest
import torch

from snapper.config import ModelConfig, TrainConfig
from snapper.overrides import to_dict
from snapper.training.state import (
    BEST_DIR,
    STATE_FILE,
    TrainState,
    best_on_disk,
    check_resumable,
    finished_conflicts,
    load_state,
    rng_state,
    set_rng_state,
    weight_fields,
)


def _state(cfg: TrainConfig, **kw) -> TrainState:
    return TrainState(model={"w": torch.ones(2)}, optimizer={"state": {}, "param_groups": []},
                      scheduler={"last_epoch": 3}, config=to_dict(cfg), **kw)


def test_rng_state_is_weights_only_safe(tmp_path):
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(state, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    set_rng_state(loaded)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_state_round_trip_is_weights_only(tmp_path):
    cfg = TrainConfig()
    st = _state(cfg, step=3, rng=[rng_state()], best_score=12.5, history=[{"step": 1, "loss": 0.5}],
                mlflow_run_id="abc", finished=True, result={"last_checkpoint": "x"})
    path = st.save(tmp_path)
    assert path == tmp_path / STATE_FILE
    raw = torch.load(path, weights_only=True)  # must not need pickle
    assert set(raw) == {f.name for f in dataclasses.fields(TrainState)}
    back = load_state(tmp_path)
    assert back is not None and back.step == 3 and back.finished and back.best_score == 12.5
    assert back.history == st.history and back.config == to_dict(cfg) and back.mlflow_run_id == "abc"
    assert torch.equal(back.model["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temp file left behind


def test_state_of_an_earlier_version_loads(tmp_path):
    """Keys added later (scaler, evals_since_best, result...) keep their defaults."""
    torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "step": 5, "config": {}, "gone": 1},
               tmp_path / STATE_FILE)
    st = load_state(tmp_path)
    assert st is not None and st.step == 5 and st.scaler == {} and st.rng == [] and not st.finished


def test_missing_and_damaged_state(tmp_path):
    assert load_state(tmp_path) is None
    (tmp_path / STATE_FILE).write_bytes(b"not a torch file")
    with pytest.raises(RuntimeError, match="cannot load the training state"):
        load_state(tmp_path)


def test_inference_only_settings_do_not_block_a_resume(tmp_path, caplog):
    assert "confidence_px" not in weight_fields() and "input_size" in weight_fields()
    cfg = TrainConfig()
    saved = _state(cfg)
    saved.config["model"]["confidence_px"] = 9.0  # changed between the runs: fine
    saved.config["model"]["confidence_radius"] = 2  # an obsolete key of an old run: ignored
    check_resumable(cfg, saved, tmp_path / STATE_FILE)
    del saved.config["model"]["confidence_px"]  # older runs did not save it at all
    check_resumable(cfg, saved, tmp_path / STATE_FILE)
    with caplog.at_level(logging.WARNING, logger="snapper.training.loop"):
        check_resumable(dataclasses.replace(cfg, lr=1.0), saved, tmp_path / STATE_FILE)
    assert "schedule changes" in caplog.text


def test_a_run_saved_before_a_model_field_existed_resumes_at_its_default(tmp_path):
    cfg = TrainConfig()
    saved = _state(cfg)
    for key in ("zoom", "zoom_scale", "zoom_length", "zoom_min_scale"):  # added with the zoom-in pass
        del saved.config["model"][key]
    check_resumable(cfg, saved, tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="different model config"):  # but not with the new feature on
        check_resumable(dataclasses.replace(cfg, model=ModelConfig(zoom=True)), saved, tmp_path / STATE_FILE)


def test_a_different_model_is_refused(tmp_path):
    cfg = TrainConfig()
    other = dataclasses.replace(cfg, model=ModelConfig(input_size=48))
    with pytest.raises(ValueError, match="different model config"):
        check_resumable(other, _state(cfg), tmp_path / STATE_FILE)


def test_best_on_disk_wins_when_newer(tmp_path):
    assert best_on_disk(tmp_path, 3.0) == 3.0  # nothing on disk
    (tmp_path / BEST_DIR).mkdir()
    (tmp_path / BEST_DIR / "config.json").write_text(json.dumps({"metrics": {"score": 7.0}}))
    assert best_on_disk(tmp_path, 3.0) == 7.0 and best_on_disk(tmp_path, None) == 7.0
    assert best_on_disk(tmp_path, 9.0) == 9.0


def test_a_run_saved_with_backbone_resumes_with_trunk(tmp_path):
    cfg = TrainConfig(model=ModelConfig(trunk="resnet18"))
    saved = _state(cfg)
    saved.config["model"]["backbone"] = saved.config["model"].pop("trunk")  # saved before the rename
    check_resumable(cfg, saved, tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="different model config"):
        check_resumable(TrainConfig(model=ModelConfig(trunk="resnet34")), saved, tmp_path / STATE_FILE)


def test_a_finished_run_names_what_it_was_not_asked_for(tmp_path):
    """Asking a finished run again for other settings would train nothing: the differences are
    named; where it lives, how it is logged and inference-only settings are the same run."""
    cfg = TrainConfig(steps=500, out_dir="runs/a")
    saved = _state(cfg, finished=True)
    same = dataclasses.replace(cfg, out_dir="/abs/runs/a", device="cpu", log_every=7, compile=True,
                               model=ModelConfig(confidence_px=5.0),
                               tracking=dataclasses.replace(cfg.tracking, run_name="x", registered_model=None))
    assert finished_conflicts(same, saved) == {}
    other = dataclasses.replace(cfg, steps=10, lr=0.5)
    assert finished_conflicts(other, saved) == {"lr": (cfg.lr, 0.5), "steps": (500, 10)}
    saved.config["model"]["backbone"] = saved.config["model"].pop("trunk")  # a key of an earlier version
    assert finished_conflicts(cfg, saved) == {}
