"""Typed configuration: the one place where defaults live.

Every stage (model, jitter, data, training, evaluation, batch snapping) takes one of these
dataclasses. They round-trip through plain dicts so a config can be saved next to every
checkpoint and MLflow run, read from YAML, and overridden from the command line with
dotted keys (``--set train.lr=1e-3``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class JitterConfig:
    """The paper's rough-box protocol: shift the centre, then rescale, then clip.

    Defaults are the published ones (+/-10% shift, one shared ratio in [0.9, 1.1]);
    ``shift=0.4`` etc. gives noisier protocols such as OA-MIL's.
    """

    shift: float = 0.1
    scale_min: float = 0.9
    scale_max: float = 1.1
    shared_ratio: bool = True


@dataclass
class ModelConfig:
    """Architecture and the crop geometry it was trained with (both travel with a checkpoint).

    ``context`` is the crop extent relative to the (buffered) rough box on each axis. With the
    paper's jitter a true edge can sit up to ~17% of the rough box outside it, so 1.4 keeps
    the truth inside the crop almost always. ``num_bins`` is the number of edge positions per
    axis over the crop (``input_size`` + 1 puts one bin on every input pixel boundary).
    """

    backbone: str = "resnet50"
    weights: str | None = None  # None (random init) or "imagenet"
    head: str = "edges"  # "edges" (the paper's edge classification) or "regression" (baseline)
    input_size: int = 256
    context: float = 1.4
    fpn_channels: int = 128
    decoder_channels: int = 128
    decoder_layers: int = 3
    decode_window: int = 3  # half-width (bins) of the local soft-argmax around the peak
    confidence_px: float = 3.0  # confidence = the model's probability that the edge is within this (original px)

    @property
    def num_bins(self) -> int:
        return self.input_size + 1


@dataclass
class DataConfig:
    """Where training/validation samples come from (WebDataset shard URLs or globs)."""

    train_shards: list[str] = field(default_factory=list)
    val_shards: list[str] = field(default_factory=list)
    boxes_per_image: int = 4  # boxes sampled per decoded image in the training stream
    min_box_size: float = 4.0  # boxes with w or h below this (px) are not trained on
    shuffle_buffer: int = 256
    workers: int = 2
    hflip: bool = True
    color_jitter: float = 0.2
    val_max_boxes: int | None = None  # cap for quick validation during training
    seed: int = 0
    resampled: bool = True  # draw shards with replacement (ranks never starve); False = exact epochs
    epoch_samples: int | None = None  # crops per resampled epoch over all ranks; None = counted from shards
    crop_on: str = "worker"  # "worker" (CPU, in the loader) or "device" (loader decodes, trainer crops)
    draft_decode: bool = True  # decode JPEGs at reduced DCT scale when every crop is downscaled


@dataclass
class TrainConfig:
    """One training run. ``steps`` counts optimizer steps; everything is resumable."""

    model: ModelConfig = field(default_factory=ModelConfig)
    jitter: JitterConfig = field(default_factory=JitterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    out_dir: str = "runs/default"
    steps: int = 20000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 500
    grad_clip: float = 1.0
    amp: bool = True  # bf16 (or fp16 + GradScaler) on CUDA; ignored on CPU
    channels_last: bool = True
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 20
    ckpt_every: int = 500
    eval_every: int = 1000
    patience: int | None = None  # stop after this many validations without a new best (None: never)
    seed: int = 0
    mlflow: bool = True
    experiment: str = "snapper"
    registered_model: str | None = "snapper"
    run_name: str | None = None


@dataclass
class EvalConfig:
    """Evaluation over the deterministic (per-annotation-id) jitter."""

    shards: list[str] = field(default_factory=list)
    jitter: JitterConfig = field(default_factory=JitterConfig)
    batch_size: int = 64
    buffer_ratio: float = 1.0
    seed: int = 0
    max_boxes: int | None = None
    workers: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16/fp16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16


@dataclass
class BatchConfig:
    """Batch snapping of rough COCO annotations (``snapper batch-snap``, flow ``batch-snap``).

    ``review_threshold``: an edge whose confidence is below it puts the box on the review list;
    ``review_moved_frac``: so does an edge that moved more than this fraction of the rough
    box's extent on its axis (the paper's jitter moves an edge by at most ~15%).
    ``min_box_size``: rough boxes thinner than this (px, after clipping) are kept, not snapped.
    ``fuse_key``: annotations sharing this field (per image) are several workers' boxes of one
    object and also get one fused box; None disables fusion.
    """

    chunk_images: int = 256  # images per chunk (the unit of resume and of fan-out in the flow)
    batch_size: int = 128  # crops per forward pass, gathered across images
    workers: int = 2  # DataLoader processes decoding + cropping; 0 = in the main process
    prefetch_factor: int = 4
    device: str = "auto"
    precision: str = "auto"  # auto (bf16/fp16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    buffer_ratio: float = 1.0
    min_box_size: float = 2.0
    review_threshold: float = 0.5
    review_moved_frac: float = 0.25
    fuse_key: str | None = "object_id"
    draft_decode: bool = True


# ---------------------------------------------------------------------------- (de)serialisation


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _resolve(tp: Any) -> Any:
    """Strip Optional/Union down to the dataclass type, if any."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build a dataclass from a (possibly partial) dict; unknown keys are an error."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {sorted(unknown)}; known: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = _resolve(hints[name])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value)
        kwargs[name] = value
    return cls(**kwargs)  # type: ignore[call-arg]


def _coerce(text: str) -> Any:
    """Parse a command-line value with YAML rules (numbers, bools, null, lists)."""
    import yaml

    return yaml.safe_load(text)


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Apply ``a.b=value`` overrides (YAML-typed values) and return a new config."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise ValueError(f"override {item!r}: {p!r} is not a config section")
            node = node[p]
        if parts[-1] not in node:
            raise ValueError(f"override {item!r}: unknown key {parts[-1]!r}")
        node[parts[-1]] = _coerce(value)
    return from_dict(type(cfg), data)


def load_yaml(cls: type[T], path: str | Path) -> T:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return from_dict(cls, data)


def dump_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
