"""Fine-tuning from a model (``--init-from``): the parent's architecture and weights start a
fresh run, a contradicting architecture setting is refused by name, the version records its
parent, and a resumed run continues from its own state."""

from __future__ import annotations

import json

import pytest
import torch

from snapper.cli import main as cli
from snapper.errors import ConfigError
from snapper.models.checkpoint import load_checkpoint
from snapper.overrides import apply_overrides
from snapper.training.init_from import with_parent_model
from snapper.training.presets import preset_config, regression_baseline
from tests.batchdata import TINY, tiny_checkpoint


def test_the_architecture_comes_from_the_parent_and_a_contradiction_is_named(tmp_path):
    parent = tiny_checkpoint(tmp_path / "parent")
    cfg = with_parent_model(apply_overrides(preset_config("finetune"), {"init_from": str(parent)}))
    assert (cfg.model.trunk, cfg.model.input_size, cfg.model.fpn_channels) == (TINY.trunk, TINY.input_size, 16)
    clash = apply_overrides(preset_config("finetune"), {"init_from": str(parent), "model.input_size": 64})
    with pytest.raises(ConfigError, match=r"model.input_size=64: the architecture comes from init_from"):
        with_parent_model(clash)
    same = apply_overrides(preset_config("finetune"), {"init_from": str(parent), "model.confidence_px": 2.0})
    assert with_parent_model(same).model.confidence_px == 2.0  # inference-only settings stay the user's
    base = regression_baseline(apply_overrides(preset_config("finetune"), {"init_from": str(parent)}))
    assert base.init_from is None and base.model.head == "regression" and base.model.trunk == TINY.trunk


def test_a_fine_tuning_run_starts_from_the_parent_and_records_it(tmp_path, monkeypatch, capsys):
    from tests.helpers import make_tiny_shards

    shards = make_tiny_shards(tmp_path / "data")
    monkeypatch.setenv("SNAPPER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    parent = tiny_checkpoint(tmp_path / "parent", seed=3)
    out = tmp_path / "child"
    args = ["train", "--preset", "finetune", "--init-from", str(parent), "--set", "steps=1", "--set", "eval_every=1",
            "--set", "log_every=1", "--set", "device=cpu", "--set", "batch_size=4", "--set", "data.workers=0",
            "--set", "warmup_steps=1", "--set", "lr=1e-12", "--set", "tracking.registered_model=unit-ft",
            "--set", f"data.train_shards={json.dumps(shards['train'])}",
            "--set", f"data.val_shards={json.dumps(shards['val'])}", "--out-dir", str(out)]
    assert cli(args) == 0
    result = json.loads(capsys.readouterr().out)
    child, child_cfg, _ = load_checkpoint(out / "last")
    mother, _, _ = load_checkpoint(parent)
    assert child_cfg.trunk == TINY.trunk
    drift = max((a - b).abs().max().item() for a, b in zip(child.parameters(), mother.parameters()))
    assert drift < 1e-6  # one step at lr 1e-12: the parent's weights (BatchNorm statistics aside), not a fresh init
    from snapper.mlops import tracking

    mv = tracking.mlflow_client().get_model_version("unit-ft", str(result["registered"]["version"]))
    assert mv.tags["parent"] == str(parent)
    assert cli(args) == 0  # the finished run is reused, not started again from the parent
    assert torch.equal(next(iter(load_checkpoint(out / "last")[0].state_dict().values())),
                       next(iter(child.state_dict().values())))
