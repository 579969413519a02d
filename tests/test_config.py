"""Typed configuration: every override is cast to its field's type or refused by name."""

from __future__ import annotations

import pytest

from snapper.config import BatchConfig, EvalConfig, ModelConfig, TrainConfig
from snapper.errors import ConfigError
from snapper.overrides import (
    apply_overrides,
    dump_yaml,
    from_dict,
    inference_only_fields,
    load_yaml,
    read_yaml,
    to_dict,
)


def test_strings_are_cast_to_the_field_type() -> None:
    cfg = apply_overrides(TrainConfig(), ["lr=1e-3", "steps=12", "amp=false", "model.weights=null",
                                          "data.train_shards=[a.tar, b.tar]", "patience=none",
                                          "model.backbone=resnet18", "data.val_max_boxes=7"])
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)
    assert cfg.steps == 12 and cfg.amp is False and cfg.model.weights is None and cfg.patience is None
    assert cfg.data.train_shards == ["a.tar", "b.tar"] and cfg.model.backbone == "resnet18"
    assert cfg.data.val_max_boxes == 7
    assert apply_overrides(TrainConfig(), ["data.train_shards=a.tar,b.tar"]).data.train_shards == ["a.tar", "b.tar"]
    assert apply_overrides(TrainConfig(), ["lr=1"]).lr == 1.0 and isinstance(apply_overrides(TrainConfig(), ["lr=1"]).lr, float)


@pytest.mark.parametrize("item, words", [
    ("steps=abc", ["steps", "int", "'abc'"]),
    ("steps=1.5", ["steps", "int"]),
    ("lr=fast", ["lr", "float"]),
    ("amp=maybe", ["amp", "bool"]),
    ("model.input_size=", ["model.input_size", "int"]),
    ("steps=null", ["steps", "int"]),
    ("nope=1", ["nope", "unknown"]),
    ("model.nope=1", ["model.nope", "unknown", "ModelConfig"]),
    ("lr.x=1", ["lr.x", "not a section"]),
    ("model=resnet18", ["model", "section"]),
    ("steps", ["steps", "key=value"]),
])
def test_bad_overrides_name_the_key_and_type(item: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides(TrainConfig(), [item])
    for w in words:
        assert w in str(e.value)


def test_typed_dict_overrides_check_types_without_casting_text_twice() -> None:
    cfg = apply_overrides(TrainConfig(), {"steps": 5, "lr": 1, "model.backbone": "resnet18", "data.hflip": False})
    assert (cfg.steps, cfg.lr, cfg.model.backbone, cfg.data.hflip) == (5, 1.0, "resnet18", False)
    with pytest.raises(ConfigError, match="steps: expected int"):
        apply_overrides(TrainConfig(), {"steps": 2.5})
    with pytest.raises(ConfigError, match="data.hflip: expected bool"):
        apply_overrides(TrainConfig(), {"data.hflip": 3})
    with pytest.raises(ConfigError, match="steps: expected int"):
        apply_overrides(TrainConfig(), {"steps": True})  # a bool is not a step count


def test_from_dict_checks_nested_types_and_round_trips() -> None:
    cfg = apply_overrides(TrainConfig(), ["steps=3", "model.input_size=64"])
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="model.input_size: expected int"):
        from_dict(TrainConfig, {"model": {"input_size": "big"}})
    with pytest.raises(ConfigError, match="model: expected a mapping"):
        from_dict(TrainConfig, {"model": 3})
    with pytest.raises(ConfigError, match="unknown EvalConfig field"):
        from_dict(EvalConfig, {"shard": []})


def test_yaml_loader_names_the_file(tmp_path) -> None:
    good = tmp_path / "c.yaml"
    good.write_text(dump_yaml(apply_overrides(BatchConfig(), ["buffer_ratio=1.5"])))
    assert load_yaml(BatchConfig, good).buffer_ratio == 1.5
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml(tmp_path / "empty.yaml") == {}


def test_inference_only_fields_are_marked_not_listed() -> None:
    assert inference_only_fields(ModelConfig) == {"confidence_px"}
    assert inference_only_fields(TrainConfig) == set()


def test_tuples_are_checked_element_by_element() -> None:
    from snapper.data.synthetic import SynthConfig

    cfg = apply_overrides(SynthConfig(), ["bucket_probs=0.2,0.3,0.5"])
    assert cfg.bucket_probs == (0.2, 0.3, 0.5)
    assert apply_overrides(SynthConfig(), ["bucket_probs=[1, 1, 2]"]).bucket_probs == (1.0, 1.0, 2.0)
    with pytest.raises(ConfigError, match=r"bucket_probs: expected tuple of \(float, float, float\)"):
        apply_overrides(SynthConfig(), ["bucket_probs=0.5,0.5"])
