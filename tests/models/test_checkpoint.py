"""Checkpoints: a round trip gives the same model; earlier versions' files still load."""

import json

import pytest
import torch

from snapper.config import ModelConfig
from snapper.errors import ConfigError
from snapper.geometry import SIZE_BUCKETS
from snapper.lineage import SIDECAR
from snapper.models.checkpoint import copy_checkpoint, load_checkpoint, save_checkpoint
from snapper.models.net import build_model
from snapper.overrides import apply_overrides

TINY = dict(trunk="resnet18", input_size=64, fpn_channels=32, decoder_channels=32, decoder_layers=2)


def test_checkpoint_round_trip(tmp_path):
    cfg = ModelConfig(**TINY)
    m = build_model(cfg).eval()
    save_checkpoint(tmp_path / "ck", m, cfg, {"step": 3})
    m2, cfg2, meta = load_checkpoint(tmp_path / "ck")
    assert cfg2 == cfg and meta["step"] == 3
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    assert torch.equal(m(x), m2(x))


def test_checkpoints_of_earlier_versions_still_load(tmp_path):
    cfg = ModelConfig(**TINY)
    path = save_checkpoint(tmp_path / "old", build_model(cfg), cfg)
    meta = json.loads((path / "config.json").read_text())
    meta["model"].pop("confidence_px")
    meta["model"]["confidence_radius"] = 2  # what session-1 checkpoints saved
    (path / "config.json").write_text(json.dumps(meta))
    _, loaded, _ = load_checkpoint(path)
    assert loaded.confidence_px == ModelConfig().confidence_px


def _saved(tmp_path, name="ck"):
    cfg = ModelConfig(**TINY)
    return save_checkpoint(tmp_path / name, build_model(cfg), cfg)


def test_a_pickle_is_refused_naming_the_file(tmp_path):
    import pytest

    from snapper.models.checkpoint import CheckpointError

    path = _saved(tmp_path)
    torch.save({"w": torch.zeros(1), "evil": object()}, path / "model.pt")  # not weights-only loadable
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path / "model.pt") in str(e.value) and "weights_only=False" not in str(e.value)


def test_empty_truncated_and_foreign_weights_are_named(tmp_path):
    import pytest

    from snapper.models.checkpoint import CheckpointError

    path = _saved(tmp_path)
    good = (path / "model.pt").read_bytes()
    (path / "model.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="model.pt: empty file"):
        load_checkpoint(path)
    (path / "model.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="model.pt: not a readable torch file"):
        load_checkpoint(path)
    other = ModelConfig(**{**TINY, "fpn_channels": 16})
    save_checkpoint(tmp_path / "other", build_model(other), other)
    (path / "model.pt").write_bytes((tmp_path / "other" / "model.pt").read_bytes())
    with pytest.raises(CheckpointError, match="do not fit the architecture.*of another shape"):
        load_checkpoint(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps({"model": {"input_size": "big"}}))
    with pytest.raises(CheckpointError, match="config.json: model.input_size|input_size: expected int"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_checkpoint(tmp_path / "nowhere")


def test_checkpoints_saved_with_backbone_load_as_trunk(tmp_path):
    path = _saved(tmp_path)
    meta = json.loads((path / "config.json").read_text())
    meta["model"]["backbone"] = meta["model"].pop("trunk")  # what checkpoints before the rename hold
    (path / "config.json").write_text(json.dumps(meta))
    _, cfg, _ = load_checkpoint(path)
    assert cfg == ModelConfig(**TINY)


def test_an_absurd_model_config_is_refused_naming_the_file(tmp_path):
    import pytest

    from snapper.errors import BadModelError
    from snapper.models.checkpoint import CheckpointError, ModelNotFoundError

    path = _saved(tmp_path)
    meta = json.loads((path / "config.json").read_text())
    meta["model"]["fpn_channels"] = 200_000  # would allocate gigabytes before failing
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value) == f"{path / 'config.json'}: model.fpn_channels must be a whole number in [1, 4096], got 200000"
    assert isinstance(e.value, BadModelError) and isinstance(e.value, ValueError)
    (path / "model.pt").unlink()
    meta["model"]["fpn_channels"] = TINY["fpn_channels"]
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelNotFoundError, match="checkpoint has no model.pt"):
        load_checkpoint(path)


def test_a_calibrated_copy_round_trips_and_configs_without_calibration_load(tmp_path):
    src = _saved(tmp_path, "src")
    (src / SIDECAR).write_text('{"dataset": "coco"}')
    meta = json.loads((src / "config.json").read_text())
    meta["model"].pop("calibration")  # what every checkpoint saved before calibration existed
    meta["step"] = 7
    (src / "config.json").write_text(json.dumps(meta))
    _, old, _ = load_checkpoint(src)
    assert old.calibration is None
    knots = [[0.0, 0.5, 1.0], [0.1, 0.4, 0.9]]
    dst = copy_checkpoint(src, tmp_path / "cal", ModelConfig(**TINY, calibration=knots), {"calibrated_from": "x"})
    assert (dst / "model.pt").read_bytes() == (src / "model.pt").read_bytes()  # the same weights, byte for byte
    assert (dst / SIDECAR).read_text() == '{"dataset": "coco"}'
    _, cfg, meta = load_checkpoint(dst)
    assert cfg.calibration == knots and meta["step"] == 7 and meta["calibrated_from"] == "x"
    with pytest.raises(ValueError, match="fpn_channels"):  # only inference-only settings may change
        copy_checkpoint(src, tmp_path / "bad", ModelConfig(**{**TINY, "fpn_channels": 8}))


@pytest.mark.parametrize("knots", [[[0.0, 1.0], [0.5]], [[0.5, 0.5], [0.1, 0.2]], [[0.0, 1.0], [0.6, 0.2]],
                                   [[0.0, 1.5], [0.1, 0.2]], [[0.0, 1.0], [0.1, float("nan")]], [[0.5], [0.5]]])
def test_a_broken_calibration_is_refused(knots):
    with pytest.raises(ConfigError, match="model.calibration"):
        ModelConfig(calibration=knots)


PER_SIZE = {"all": [[0.0, 1.0], [0.1, 0.9]], "small": [[0.0, 0.5, 1.0], [0.2, 0.7, 0.95]],
            "large": [[0.0, 1.0], [0.0, 0.6]]}


def test_per_size_calibration_round_trips_and_the_single_map_form_still_loads(tmp_path):
    src = _saved(tmp_path, "src")
    dst = copy_checkpoint(src, tmp_path / "per-size", ModelConfig(**TINY, calibration=PER_SIZE))
    _, cfg, _ = load_checkpoint(dst)
    assert cfg.calibration == PER_SIZE  # medium left out: it reads "all"
    # a checkpoint calibrated before per-size maps existed: plain knots in config.json, read as they were
    meta = json.loads((dst / "config.json").read_text())
    meta["model"]["calibration"] = [[0, 0.5, 1], [0.1, 0.4, 0.9]]  # ints, as JSON may hold them
    (dst / "config.json").write_text(json.dumps(meta))
    _, old, _ = load_checkpoint(dst)
    assert old.calibration == [[0.0, 0.5, 1.0], [0.1, 0.4, 0.9]]
    assert ModelConfig.CALIBRATION_KEYS == ("all", *SIZE_BUCKETS)  # the read-out's buckets, "all" first


@pytest.mark.parametrize("maps", [{"small": [[0.0, 1.0], [0.1, 0.9]]},  # no map for every box
                                  {"all": [[0.0, 1.0], [0.1, 0.9]], "tiny": [[0.0, 1.0], [0.1, 0.9]]},  # unknown key
                                  {"all": [[0.0, 1.0], [0.1, 0.9]], "large": [[0.0, 1.0], [0.6, 0.2]]},  # decreasing
                                  {}])
def test_a_broken_per_size_calibration_is_refused(maps):
    with pytest.raises(ConfigError, match="model.calibration"):
        ModelConfig(calibration=maps)


def test_a_per_size_calibration_can_be_given_on_the_command_line():
    cfg = apply_overrides(ModelConfig(), ["calibration={all: [[0, 1], [0.1, 0.9]], small: [[0, 1], [0.2, 1]]}"])
    assert cfg.calibration == {"all": [[0.0, 1.0], [0.1, 0.9]], "small": [[0.0, 1.0], [0.2, 1.0]]}
    assert apply_overrides(ModelConfig(), ["calibration=[[0, 1], [0.1, 0.9]]"]).calibration == [[0.0, 1.0], [0.1, 0.9]]
    with pytest.raises(ConfigError, match="mapping of str to list of list of float"):
        apply_overrides(ModelConfig(), ["calibration=abc"])
