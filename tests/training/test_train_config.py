"""TrainConfig, DataConfig and JitterConfig refuse out-of-range values when they are built;
the tracking settings are a section of their own, and the keys of earlier versions still read."""

from __future__ import annotations

import pytest
import yaml

from snapper import cli
from snapper.config import DataConfig, JitterConfig, TrackingConfig, TrainConfig
from snapper.errors import ConfigError, UserInputError
from snapper.overrides import apply_overrides, from_dict, to_dict
from snapper.training.loop import RUN_CONFIG_FILE, train
from snapper.training.presets import build_config
from snapper.training.state import load_state
from tests.helpers import make_tiny_shards, tiny_train_config



@pytest.mark.parametrize("override, field", [
    ("lr=inf", "lr"), ("lr=nan", "lr"), ("lr=-1e-3", "lr"), ("steps=-10", "steps"), ("steps=0", "steps"),
    ("batch_size=0", "batch_size"), ("log_every=0", "log_every"), ("eval_every=-1", "eval_every"),
    ("weight_decay=-0.1", "weight_decay"), ("grad_clip=nan", "grad_clip"), ("warmup_steps=-1", "warmup_steps"),
    ("ema_decay=1", "ema_decay"), ("ema_decay=0", "ema_decay"), ("patience=0", "patience"),
    ("data.workers=-1", "data.workers"), ("data.boxes_per_image=0", "data.boxes_per_image"),
    ("data.color_jitter=1.5", "data.color_jitter"), ("data.crop_on=gpu", "data.crop_on"),
    ("data.buffer_ratio_max=inf", "data.buffer_ratio_min/max"), ("data.val_max_boxes=0", "data.val_max_boxes"),
    ("jitter.scale_min=1.2", "jitter.scale_max"), ("jitter.shift=-0.1", "jitter.shift"),
    ("jitter.scale_min=0", "jitter.scale_min"), ("tracking.experiment=", "tracking.experiment"),
])
def test_out_of_range_values_are_refused_naming_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field.replace('.', '[.]')} must be") as e:
        apply_overrides(TrainConfig(), [override])
    assert isinstance(e.value, UserInputError) and "\n" not in str(e.value)


def test_sections_check_themselves_and_defaults_pass() -> None:
    TrainConfig(), DataConfig(), JitterConfig(), TrackingConfig()  # the defaults are valid
    with pytest.raises(ConfigError, match="jitter.scale_max"):
        JitterConfig(scale_min=1.1, scale_max=0.9)
    with pytest.raises(ConfigError, match="data.crop_on"):
        from_dict(TrainConfig, {"model": {"zoom": True}, "data": {"crop_on": "device"}})
    assert apply_overrides(TrainConfig(), ["patience=null", "ema_decay=0.99"]).ema_decay == 0.99


def test_tracking_section_and_the_old_keys() -> None:
    cfg = apply_overrides(TrainConfig(), ["mlflow=false", "run_name=r", "experiment=e", "registered_model=null"])
    assert cfg.tracking == TrackingConfig(enabled=False, experiment="e", registered_model=None, run_name="r")
    assert apply_overrides(TrainConfig(), {"tracking.enabled": False}).tracking.enabled is False
    assert "mlflow" not in to_dict(cfg) and to_dict(cfg)["tracking"]["run_name"] == "r"
    with pytest.raises(ConfigError, match="mlflow and tracking.enabled are the same setting"):
        from_dict(TrainConfig, {"mlflow": False, "tracking": {"enabled": True}})
    with pytest.raises(ConfigError, match="tracking.enabled: expected bool"):
        apply_overrides(TrainConfig(), ["mlflow=maybe"])


def test_cli_set_mlflow_is_an_alias(tmp_path, capsys) -> None:
    assert cli.main(["train", "--preset", "cpu-tiny", "--set", "mlflow=false", "--print-config",
                     "--out-dir", str(tmp_path / "o")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["tracking"]["enabled"] is False and "mlflow" not in printed


def test_a_run_saved_with_the_old_keys_resumes(tmp_path) -> None:
    """A run folder written before the tracking section: its config.yaml and train_state.pt
    hold ``mlflow``/``registered_model`` at the top level; resuming from it still works."""
    shards = make_tiny_shards(tmp_path / "data")
    out = tmp_path / "old"
    cfg = tiny_train_config(shards, out, steps=4, eval_every=100, ckpt_every=2)
    assert train(cfg, max_steps_this_run=2).steps == 2
    saved = yaml.safe_load((out / RUN_CONFIG_FILE).read_text())
    tracking = saved.pop("tracking")
    saved.update({"mlflow": tracking["enabled"], "experiment": tracking["experiment"],
                  "registered_model": tracking["registered_model"], "run_name": tracking["run_name"]})
    (out / RUN_CONFIG_FILE).write_text(yaml.safe_dump(saved))
    old = build_config(None, out / RUN_CONFIG_FILE)  # what `snapper train --config <run>/config.yaml` reads
    assert old == cfg
    res = train(old)
    assert res.steps == 4 and load_state(out).finished
