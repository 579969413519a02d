"""Presets and the config layers: preset -> YAML -> --set -> out_dir."""

from __future__ import annotations

import pytest
import yaml

from snapper.config import TrainConfig
from snapper.errors import ConfigError
from snapper.training.presets import (
    PRESETS,
    REGRESSION_LR_SCALE,
    build_config,
    deep_merge,
    preset_config,
    regression_baseline,
)


def test_presets_and_override_order(tmp_path):
    for name in PRESETS:
        assert isinstance(preset_config(name), TrainConfig)
    gpu, cpu = preset_config("gpu"), preset_config("cpu")
    assert (gpu.model.trunk, gpu.model.weights, gpu.trunk_lr_mult) == ("resnet50", "imagenet", 0.1)
    assert (cpu.model.trunk, cpu.model.weights) == ("efficientnet_lite0", "imagenet") and cpu.batch_size == 32
    assert cpu.freeze_trunk_bn and cpu.trunk_lr_mult < 1
    assert preset_config("demo").model.weights is None  # the demo stays offline and fast
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"batch_size": 5, "model": {"input_size": 64}}))
    cfg = build_config("cpu", str(f), ["model.input_size=96", "model.head=regression"], str(tmp_path / "o"))
    assert cfg.batch_size == 5  # YAML over preset
    assert cfg.model.input_size == 96 and cfg.model.head == "regression"  # --set over YAML
    assert cfg.model.fpn_channels == PRESETS["cpu"]["model"]["fpn_channels"]  # preset kept where not overridden
    assert cfg.out_dir == str(tmp_path / "o")
    with pytest.raises(ValueError, match="unknown"):
        build_config(None, None, ["model.nope=1"])


def test_overrides_are_typed():
    cfg = build_config("cpu-tiny", None, ["lr=1e-3", "steps=7"])
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float) and cfg.steps == 7
    assert build_config(None, None, {"lr": 0.5, "model.head": "regression"}).model.head == "regression"
    with pytest.raises(ConfigError, match="steps"):
        build_config(None, None, ["steps=abc"])


def test_unknown_preset_and_bad_yaml_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        build_config("nope", None)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(None, bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("stepz: 3\n")
    with pytest.raises(ConfigError, match="stepz"):
        build_config(None, typo)


def test_deep_merge_keeps_the_rest_of_a_section():
    base = {"model": {"trunk": "resnet18", "input_size": 48}, "steps": 4}
    merged = deep_merge(base, {"model": {"input_size": 32}, "lr": 1.0})
    assert merged == {"model": {"trunk": "resnet18", "input_size": 32}, "steps": 4, "lr": 1.0}
    assert base["model"]["input_size"] == 48  # the preset itself is not modified
    assert preset_config("cpu-tiny", {"model": {"input_size": 32}}).model.trunk == "resnet18"


def test_the_regression_baseline_keeps_the_run_but_its_head_and_rate():
    base = preset_config("cpu", {"model": {"zoom": True}})
    reg = regression_baseline(base)
    assert reg.model.head == "regression" and not reg.model.zoom
    assert reg.lr == base.lr * REGRESSION_LR_SCALE < base.lr
    assert (reg.model.trunk, reg.steps, reg.batch_size, reg.data) == (base.model.trunk, base.steps,
                                                                         base.batch_size, base.data)
