"""Typed configuration: every override is cast to its field's type or refused by name."""

from __future__ import annotations

import pytest

from snapper.config import BatchConfig, EvalConfig, ModelConfig, SnapSettings, TrainConfig
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
                                          "model.trunk=resnet18", "data.val_max_boxes=7"])
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)
    assert cfg.steps == 12 and cfg.amp is False and cfg.model.weights is None and cfg.patience is None
    assert cfg.data.train_shards == ["a.tar", "b.tar"] and cfg.model.trunk == "resnet18"
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
    cfg = apply_overrides(TrainConfig(), {"steps": 5, "lr": 1, "model.trunk": "resnet18", "data.hflip": False})
    assert (cfg.steps, cfg.lr, cfg.model.trunk, cfg.data.hflip) == (5, 1.0, "resnet18", False)
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
    good.write_text(dump_yaml(apply_overrides(BatchConfig(), ["snap.buffer_ratio=1.5"])))
    assert load_yaml(BatchConfig, good).snap.buffer_ratio == 1.5
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml(tmp_path / "empty.yaml") == {}


def test_inference_only_fields_are_marked_not_listed() -> None:
    assert inference_only_fields(ModelConfig) == {"confidence_px", "calibration"}
    assert inference_only_fields(TrainConfig) == set()


def test_tuples_are_checked_element_by_element() -> None:
    from snapper.data.synthetic import SynthConfig

    cfg = apply_overrides(SynthConfig(), ["bucket_probs=0.2,0.3,0.5"])
    assert cfg.bucket_probs == (0.2, 0.3, 0.5)
    assert apply_overrides(SynthConfig(), ["bucket_probs=[1, 1, 2]"]).bucket_probs == (1.0, 1.0, 2.0)
    with pytest.raises(ConfigError, match=r"bucket_probs: expected tuple of \(float, float, float\)"):
        apply_overrides(SynthConfig(), ["bucket_probs=0.5,0.5"])


# ------------------------------------------------------------------------- ModelConfig

@pytest.mark.parametrize("field, value", [
    ("input_size", 4), ("input_size", 100_000), ("context", 1.0), ("context", float("nan")),
    ("context", float("inf")), ("fpn_channels", 0), ("fpn_channels", 200_000), ("decoder_channels", 5000),
    ("decoder_layers", 0), ("decode_window", -1), ("confidence_px", 0.0), ("confidence_px", float("inf")),
    ("zoom_scale", 0.0), ("zoom_length", 0), ("zoom_min_scale", float("nan")), ("head", "boxes"),
    ("weights", "coco"), ("trunk", ""),
])
def test_model_config_refuses_out_of_range_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"model.{field} must be"):
        ModelConfig(**{field: value})
    with pytest.raises(ConfigError, match=f"model.{field} must be"):  # from --set too, before any work
        apply_overrides(TrainConfig(), {f"model.{field}": value})


def test_model_config_in_range_values_and_zoom_needs_the_edge_head() -> None:
    ModelConfig(input_size=8, context=1.01, fpn_channels=1, decoder_channels=4096, decoder_layers=1,
                decode_window=0, weights="none")
    with pytest.raises(ConfigError, match="model.head must be 'edges' with model.zoom"):
        ModelConfig(head="regression", zoom=True)


def test_backbone_is_read_as_trunk_from_saved_configs_and_set() -> None:
    """Checkpoints and run folders saved before the rename say ``backbone``; ``--set
    model.backbone=...`` is accepted as the alias of ``model.trunk`` for one release."""
    assert from_dict(ModelConfig, {"backbone": "resnet18", "input_size": 48}).trunk == "resnet18"
    assert from_dict(TrainConfig, {"model": {"backbone": "resnet34"}}).model.trunk == "resnet34"
    assert apply_overrides(TrainConfig(), ["model.backbone=resnet18"]).model.trunk == "resnet18"
    assert apply_overrides(TrainConfig(), {"model.backbone": "resnet18"}).model.trunk == "resnet18"
    assert "backbone" not in to_dict(ModelConfig())
    with pytest.raises(ConfigError, match="model.backbone and model.trunk are the same setting"):
        from_dict(TrainConfig, {"model": {"backbone": "resnet18", "trunk": "resnet50"}})


# ------------------------------------------------------------------ read-out settings (SnapSettings)


@pytest.mark.parametrize("field, value", [
    ("device", "banana"), ("device", "cuda:x"), ("device", "gpu"), ("precision", "fp8"), ("batch_size", 0),
    ("buffer_ratio", 0.0), ("buffer_ratio", -1.0), ("buffer_ratio", float("nan")), ("buffer_ratio", float("inf")),
    ("passes", 3), ("passes", 0),
])
def test_snap_settings_refuse_out_of_range_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"snap.{field}"):
        SnapSettings(**{field: value})
    for cls in (EvalConfig, BatchConfig):  # the same checks wherever the settings are nested
        with pytest.raises(ConfigError, match=f"snap.{field}"):
            apply_overrides(cls(), {f"snap.{field}": value})


def test_snap_settings_accept_every_device_and_setting_the_tools_use() -> None:
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"):
        assert SnapSettings(device=device).device == device
    s = SnapSettings(device="cpu", precision="bf16", batch_size=1, buffer_ratio=1.25, passes=2, flip=True,
                     channels_last=False)
    assert from_dict(SnapSettings, to_dict(s)) == s and hash(s) == hash(from_dict(SnapSettings, to_dict(s)))
    # one settings object, nested: the read-out keys live under snap, with each config's own defaults
    assert EvalConfig().snap == SnapSettings() and BatchConfig().snap.batch_size == 128
    assert apply_overrides(BatchConfig(), ["snap.passes=2", "snap.flip=true"]).snap == SnapSettings(
        batch_size=128, passes=2, flip=True)
    with pytest.raises(ConfigError, match="unknown key 'passes' of BatchConfig"):
        apply_overrides(BatchConfig(), ["passes=2"])


@pytest.mark.parametrize("cls, field, value", [
    (BatchConfig, "chunk_images", 0), (BatchConfig, "workers", -1), (BatchConfig, "prefetch_factor", 0),
    (BatchConfig, "review_threshold", 1.5), (BatchConfig, "review_threshold", float("nan")),
    (BatchConfig, "review_moved_frac", -0.1), (BatchConfig, "min_box_size", -1.0), (BatchConfig, "max_pixels", 0),
    (EvalConfig, "max_boxes", 0), (EvalConfig, "workers", -1),
])
def test_batch_and_eval_configs_refuse_out_of_range_values(cls: type, field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        cls(**{field: value})
    with pytest.raises(ConfigError, match=field):
        apply_overrides(cls(), {field: value})
    assert apply_overrides(BatchConfig(), {"max_pixels": None}).max_pixels is None  # null: no budget
