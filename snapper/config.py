"""Typed configuration: the one place where defaults live.

Every stage (model, jitter, data, training, evaluation, batch snapping) takes one of these
dataclasses. They round-trip through plain dicts so a config can be saved next to every
checkpoint and MLflow run, read from YAML, and overridden from the command line with
dotted keys (``--set train.lr=1e-3``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

from snapper.checks import check, in_range, non_negative, one_of, open_unit, optional_positive, positive

# Field metadata of settings that only affect how a trained model is read out, not its
# weights: a training run resumes across changes to them.
INFERENCE_ONLY = {"inference_only": True}

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")  # see snapper.device
# A Buffer Ratio above this reads a crop mostly of padding, and its window (and memory) grows with it.
MAX_BUFFER_RATIO = 4.0
MAX_EDGE_MOVE = 4.0  # SnapSettings.max_edge_move: a fraction of the rough box's extent
SNAP_PASSES = (1, 2)  # 2: the zoom-in pass after the first (models trained with model.zoom)
JITTER_MODES = ("paper", "empirical")  # the paper's protocol, or offsets drawn from measured pairs
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")  # what resolve_device accepts
DEVICE_RULE = "auto, cpu, cuda, cuda:N or mps"
BATCH_SNAP_BATCH = 128  # batch snapping gathers crops across images: larger forward passes
CROP_MODES = ("worker", "device")  # DataConfig.crop_on: where training crops are cut
MODEL_HEADS = ("edges", "regression")  # ModelConfig.head: the paper's edge head, or the baseline
MAX_MODEL_WIDTH = 4096  # ModelConfig: the most pixels, channels or strip length a field may ask for

# Three stages drop tiny boxes, for three reasons; each default is named here, once.
SHARD_MIN_BOX_SIZE = 1.0  # sharding: below a pixel a COCO box is an annotation error
TRAIN_MIN_BOX_SIZE = 4.0  # training: edges of a box this thin carry no signal worth learning
SNAP_MIN_BOX_SIZE = 2.0  # batch snapping: thinner rough boxes are kept unchanged, with a reason

# Memory bound per image: an image is decoded only when it gives at most this many pixels
# (after JPEG draft reduction), checked from the header. 64 MP of RGB is ~0.2 GB decoded;
# with PIL's and the converters' copies a decode then peaks well under a gigabyte.
MAX_DECODE_PIXELS = 64_000_000


@dataclass
class JitterConfig:
    """How rough boxes are made from true ones, for training and evaluation.

    ``mode="paper"`` (default) is the paper's protocol: shift the centre, then rescale, then
    clip. Defaults are the published ones (+/-10% shift, one shared ratio in [0.9, 1.1]);
    ``shift=0.4`` etc. gives noisier protocols such as OA-MIL's. ``mode="empirical"`` draws each
    rough box's four edge offsets jointly from measured pairs instead (``noise_file``: the
    ``pairs.parquet`` of ``snapper noise-report``), so a model trains, and Table 1 is measured,
    on boxes drawn the way the team's annotators draw them.
    """

    shift: float = 0.1
    scale_min: float = 0.9
    scale_max: float = 1.1
    shared_ratio: bool = True
    mode: str = "paper"
    noise_file: str | None = None

    def __post_init__(self) -> None:
        one_of("jitter.mode", self.mode, JITTER_MODES)
        check(self.mode != "empirical" or bool(self.noise_file), "jitter.noise_file",
              "the pairs.parquet of snapper noise-report when jitter.mode=empirical", self.noise_file)
        non_negative("jitter.shift", self.shift)
        positive("jitter.scale_min", self.scale_min)
        check(self.scale_max >= self.scale_min and math.isfinite(self.scale_max), "jitter.scale_max",
              f"finite and >= jitter.scale_min ({self.scale_min})", self.scale_max)


def _calibration_ok(knots: object) -> bool:
    """Whether ``knots`` is a table np.interp reads as a monotone map of [0, 1] into [0, 1]: a
    table that is not would silently reorder edges, or give probabilities outside [0, 1]."""
    if not isinstance(knots, (list, tuple)) or len(knots) != 2:
        return False
    xs, ys = knots
    if not isinstance(xs, (list, tuple)) or not isinstance(ys, (list, tuple)) or len(xs) != len(ys) or len(xs) < 2:
        return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in (*xs, *ys)):
        return False  # NaN fails the range too
    return all(a < b for a, b in zip(xs, xs[1:])) and all(a <= b for a, b in zip(ys, ys[1:]))


def _calibration_maps_ok(value: object, keys: tuple[str, ...]) -> bool:
    """Whether ``value`` is one set of knots, or a mapping of ``keys`` (with ``keys[0]``, the
    map for every box, always there) to knots: the per-size form of ``model.calibration``."""
    if not isinstance(value, dict):
        return _calibration_ok(value)
    return keys[0] in value and set(value) <= set(keys) and all(_calibration_ok(v) for v in value.values())


@dataclass
class ModelConfig:
    """Architecture and the crop geometry it was trained with (both travel with a checkpoint).

    ``context`` is the crop extent relative to the (buffered) rough box on each axis. With the
    paper's jitter a true edge can sit up to ~17% of the rough box outside it, so 1.4 keeps
    the truth inside the crop almost always. ``num_bins`` is the number of edge positions per
    axis over the crop (``input_size`` + 1 puts one bin on every input pixel boundary).
    """

    trunk: str = "resnet50"  # the feature extractor: snapper.models.trunks.TRUNKS
    weights: str | None = None  # None (random init) or "imagenet"
    head: str = "edges"  # "edges" (the paper's edge classification) or "regression" (baseline)
    input_size: int = 256
    context: float = 1.4
    fpn_channels: int = 128
    decoder_channels: int = 128
    decoder_layers: int = 3
    decode_window: int = 3  # half-width (bins) of the local soft-argmax around the peak
    # confidence = the model's probability that the edge is within this many original px.
    # Inference-only: changing it changes no weight, so a run may resume with another value.
    confidence_px: float = field(default=3.0, metadata=INFERENCE_ONLY)
    # The monotone map from that raw probability to the share of such edges measured within
    # confidence_px on held-out boxes (``snapper calibrate``): knots [[x...], [y...]] read with
    # np.interp, or one set of knots per COCO size bucket of the rough box, {"all": knots,
    # "small": knots, ...} (CALIBRATION_KEYS; a bucket left out reads "all"). None: the raw
    # probability. Inference-only: fitted after training, on its weights.
    calibration: list[list[float]] | dict[str, list[list[float]]] | None = field(default=None,
                                                                                  metadata=INFERENCE_ONLY)
    # The zoom-in pass (``snapper.zoom``): with ``zoom`` the model has a fifth decoder, trained
    # on edge strips, and supports ``passes=2``. A strip is ``input_size * zoom_scale`` original
    # px across the edge and ``zoom_length`` input px along it; edges whose first-pass crop had
    # more than ``zoom_min_scale * zoom_scale`` original px per input px get the second look.
    zoom: bool = False
    zoom_scale: float = 1.0
    zoom_length: int = 32
    zoom_min_scale: float = 1.5

    # Keys of earlier versions, read as their new names (checkpoints and run folders saved
    # before, ``--set model.backbone=...``); one release, then they go.
    RENAMED: ClassVar[dict[str, str]] = {"backbone": "trunk"}
    # The keys of a per-size calibration: every box, then snapper.geometry.SIZE_BUCKETS.
    CALIBRATION_KEYS: ClassVar[tuple[str, ...]] = ("all", "small", "medium", "large")

    def __post_init__(self) -> None:
        # A checkpoint's config.json is read through here too: a value that would build an
        # absurd model (fpn_channels=200000) is refused naming the field, not by the allocator.
        check(isinstance(self.trunk, str) and bool(self.trunk), "model.trunk", "a trunk name", self.trunk)
        one_of("model.weights", self.weights, (None, "none", "imagenet"))
        one_of("model.head", self.head, MODEL_HEADS)
        in_range("model.input_size", self.input_size, 8, MAX_MODEL_WIDTH)
        check(isinstance(self.context, (int, float)) and math.isfinite(self.context) and self.context > 1,
              "model.context", "a finite number > 1", self.context)
        in_range("model.fpn_channels", self.fpn_channels, 1, MAX_MODEL_WIDTH)
        in_range("model.decoder_channels", self.decoder_channels, 1, MAX_MODEL_WIDTH)
        in_range("model.decoder_layers", self.decoder_layers, 1, 64)
        in_range("model.decode_window", self.decode_window, 0, self.input_size)
        positive("model.confidence_px", self.confidence_px)
        check(self.calibration is None or _calibration_maps_ok(self.calibration, self.CALIBRATION_KEYS),
              "model.calibration", "null, knots [[x...], [y...]] (as many x as y (>= 2), x increasing in [0, 1], "
              "y non-decreasing in [0, 1]), or a mapping of all (required), small, medium, large to such knots",
              self.calibration)
        check(not (self.zoom and self.head != "edges"), "model.head",
              "'edges' with model.zoom (the zoom-in decoder needs the edge head)", self.head)
        positive("model.zoom_scale", self.zoom_scale)
        in_range("model.zoom_length", self.zoom_length, 1, MAX_MODEL_WIDTH)
        positive("model.zoom_min_scale", self.zoom_min_scale)

    @property
    def num_bins(self) -> int:
        return self.input_size + 1

    @property
    def passes(self) -> tuple[int, ...]:
        """The snapping passes a model of this config supports."""
        return (1, 2) if self.zoom else (1,)


@dataclass
class DataConfig:
    """Where training/validation samples come from (WebDataset shard URLs or globs)."""

    train_shards: list[str] = field(default_factory=list)
    val_shards: list[str] = field(default_factory=list)
    boxes_per_image: int = 4  # boxes sampled per decoded image in the training stream
    min_box_size: float = TRAIN_MIN_BOX_SIZE  # boxes with w or h below this (px) are not trained on
    shuffle_buffer: int = 256
    workers: int = 2
    hflip: bool = True
    color_jitter: float = 0.2
    val_max_boxes: int | None = None  # cap for quick validation during training
    val_draws: int = 1  # jitter draws (seeds 0..n-1) of every validation box, scored together
    seed: int = 0
    resampled: bool = True  # draw shards with replacement (ranks never starve); False = exact epochs
    epoch_samples: int | None = None  # crops per resampled epoch over all ranks; None = counted from shards
    crop_on: str = "worker"  # "worker" (CPU, in the loader) or "device" (loader decodes, trainer crops)
    # Train on crops cut with a buffer ratio drawn per box from U(min, max) instead of 1.0. Meant to
    # free the user from picking --buffer-ratio; measured, it does not (the model learns the average
    # ratio's box scale: worse at any ratio than a model trained at 1.0 snapping at the right ratio,
    # experiments/results/buffer-ratio). Off in presets.
    buffer_ratio_min: float = 1.0
    buffer_ratio_max: float = 1.0
    draft_decode: bool = True  # decode JPEGs at reduced DCT scale when every crop is downscaled
    # zoom-in training (model.zoom): strips are cut around true edges moved by a normal error of
    # this many first-pass input px, the error a first pass leaves at that crop's scale
    zoom_noise: float = 1.5
    # check each local shard's sha256 against its manifest before reading it (remote shards,
    # e.g. pipe: URLs to object storage, are never re-downloaded to be checked)
    verify_shards: bool = True

    def __post_init__(self) -> None:
        positive("data.boxes_per_image", self.boxes_per_image)
        non_negative("data.min_box_size", self.min_box_size)
        non_negative("data.shuffle_buffer", self.shuffle_buffer)
        non_negative("data.workers", self.workers)
        check(0.0 <= self.color_jitter <= 1.0, "data.color_jitter", "in [0, 1]", self.color_jitter)
        optional_positive("data.val_max_boxes", self.val_max_boxes)
        positive("data.val_draws", self.val_draws)
        optional_positive("data.epoch_samples", self.epoch_samples)
        one_of("data.crop_on", self.crop_on, CROP_MODES)
        lo, hi = self.buffer_ratio_min, self.buffer_ratio_max
        check(0 < lo <= hi and math.isfinite(hi), "data.buffer_ratio_min/max", "finite with 0 < min <= max",
              f"{lo}/{hi}")
        non_negative("data.zoom_noise", self.zoom_noise)


@dataclass
class TrackingConfig:
    """MLflow for a training run (rank 0 only): whether, in which experiment, under which run
    name, and the registered model it becomes a version of once evaluated (``snapper train``
    with validation shards, or the ``train-snapper`` flow after its evaluation; None: never)."""

    enabled: bool = True
    experiment: str = "snapper"
    registered_model: str | None = "snapper"
    run_name: str | None = None

    def __post_init__(self) -> None:
        check(bool(self.experiment.strip()), "tracking.experiment", "a non-empty name", self.experiment)


@dataclass
class TrainConfig:
    """One training run. ``steps`` counts optimizer steps; everything is resumable."""

    model: ModelConfig = field(default_factory=ModelConfig)
    jitter: JitterConfig = field(default_factory=JitterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    out_dir: str = "runs/default"
    # Fine-tune from this model (a checkpoint folder or models:/NAME@ALIAS|VERSION): its
    # architecture and weights start the run (snapper.training.init_from); None: from scratch.
    init_from: str | None = None
    steps: int = 20000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 500
    # A pretrained trunk learns at lr * trunk_lr_mult (new layers at lr): ImageNet features
    # need adjusting, not relearning, and a full rate on tiny data overwrites them.
    trunk_lr_mult: float = 1.0
    # Keep the trunk's BatchNorm statistics fixed (eval mode) while training: a batch of 32 crops
    # around single objects is a poor estimate of the statistics the pretrained weights expect.
    freeze_trunk_bn: bool = False
    grad_clip: float = 1.0
    # Keep an exponential moving average of the weights with this decay (snapper.training.ema; e.g. 0.995
    # averages over the last ~200 steps): validation, best/ and last/ then hold the average.
    # None: the weights themselves.
    ema_decay: float | None = None
    amp: bool = True  # bf16 (or fp16 + GradScaler) on CUDA; bf16 on a CPU with AMX, else fp32
    channels_last: bool = True
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 20
    ckpt_every: int = 500
    eval_every: int = 1000
    patience: int | None = None  # stop after this many validations without a new best (None: never)
    seed: int = 0
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    # Keys of earlier versions, read as their new names (run folders saved before, ``--set
    # mlflow=false``); one release, then they go.
    RENAMED: ClassVar[dict[str, str]] = {
        "mlflow": "tracking.enabled", "experiment": "tracking.experiment",
        "registered_model": "tracking.registered_model", "run_name": "tracking.run_name",
    }

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "lr", "log_every", "ckpt_every", "eval_every"):
            positive(name, getattr(self, name))
        for name in ("weight_decay", "warmup_steps", "trunk_lr_mult", "grad_clip"):
            non_negative(name, getattr(self, name))
        open_unit("ema_decay", self.ema_decay, allow_none=True)
        optional_positive("patience", self.patience)
        check(bool(self.out_dir), "out_dir", "a folder", self.out_dir)
        check(not (self.model.zoom and self.data.crop_on == "device"), "data.crop_on",
              "worker with model.zoom (zoom-in strips are cut in the loader workers)", self.data.crop_on)


def _finite_in(value: object, lo: float, hi: float) -> bool:
    """``lo < value <= hi`` (NaN fails it)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and lo < value <= hi


@dataclass(frozen=True)
class SnapSettings:
    """How a trained model is read out: the one set of settings :class:`snapper.inference.snap.Snapper`
    takes, nested as ``snap`` in :class:`EvalConfig` and :class:`BatchConfig` (``--set
    snap.passes=2``). Frozen, so that a loaded model can be cached by its settings and shared.

    ``batch_size``: crops per forward pass. ``buffer_ratio``: each rough box is scaled about its
    centre by this before the crop (>1 for boxes drawn too tight). ``passes``: 2 adds the zoom-in
    pass (models trained with ``model.zoom``). ``flip``: test-time augmentation, each crop also
    read mirrored (2x the model time). ``channels_last``: NHWC where :mod:`snapper.device` picks
    it (faster there); false: plain NCHW, same boxes. ``precision``: one of
    :data:`PRECISION_CHOICES` (auto: bf16/fp16 autocast on CUDA, fp32 on CPU). ``guard``: the
    broken-box guard (:mod:`snapper.inference.guard`): a collapsed or crossed box is given back as
    its rough box, an edge that moved more than ``max_edge_move`` x the rough box's extent on its
    axis keeps its rough position (0.35: twice the farthest the paper's jitter moves an edge).
    """

    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    buffer_ratio: float = 1.0
    passes: int = 1
    flip: bool = False
    channels_last: bool = True
    guard: bool = True
    max_edge_move: float = 0.35

    # The fields a loaded model can change without being moved or reloaded.
    READ_OUT: ClassVar[tuple[str, ...]] = ("batch_size", "buffer_ratio", "passes", "flip", "guard", "max_edge_move")

    def __post_init__(self) -> None:
        # a device string is checked here, before any work; whether this machine has it, when used
        check(DEVICE_PATTERN.fullmatch(str(self.device)) is not None, "snap.device", DEVICE_RULE, self.device)
        one_of("snap.precision", self.precision, PRECISION_CHOICES)
        positive("snap.batch_size", self.batch_size)
        check(_finite_in(self.buffer_ratio, 0.0, MAX_BUFFER_RATIO), "snap.buffer_ratio",
              f"a number in (0, {MAX_BUFFER_RATIO:g}]", self.buffer_ratio)
        one_of("snap.passes", self.passes, SNAP_PASSES)
        check(_finite_in(self.max_edge_move, 0.0, MAX_EDGE_MOVE), "snap.max_edge_move",
              f"a number in (0, {MAX_EDGE_MOVE:g}]", self.max_edge_move)


@dataclass
class EvalConfig:
    """Evaluation over the deterministic (per-annotation-id) jitter; ``snap.batch_size`` is
    also the evaluation stream's batch."""

    shards: list[str] = field(default_factory=list)
    jitter: JitterConfig = field(default_factory=JitterConfig)
    snap: SnapSettings = field(default_factory=SnapSettings)
    seed: int = 0
    max_boxes: int | None = None
    workers: int = 0
    verify_shards: bool = True  # as DataConfig.verify_shards
    # A COCO file holding the rough box of each true box under the same annotation id (the
    # annotators' real boxes, e.g. `snapper adapt --rough`): used instead of jittering; true
    # boxes without one are counted as excluded (no_rough_box).
    rough_file: str | None = None

    def __post_init__(self) -> None:
        optional_positive("max_boxes", self.max_boxes)
        non_negative("workers", self.workers)


def _budget_ok(value: object) -> bool:
    """A review budget: a share strictly between 0 and 1, or a whole count (1.5 edges means nothing)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return 0.0 < value < 1.0 or (value >= 1.0 and float(value).is_integer())


@dataclass
class BatchConfig:
    """Batch snapping of rough COCO annotations (``snapper batch-snap``, flow ``batch-snap``).

    ``review_threshold``: an edge whose confidence is below it puts the box on the review list;
    ``review_moved_frac``: so does an edge that moved more than this fraction of the rough
    box's extent on its axis (the paper's jitter moves an edge by at most ~15%).
    ``review_budget``: also list the edges a person should look at first, as many as the budget
    allows, least likely right first (``review_edges.csv``): the confidence routes single edges,
    not whole boxes, to a reviewer, and with a calibrated model it says how many wrong edges
    that list should catch.
    ``min_box_size``: rough boxes thinner than this (px, after clipping) are kept, not snapped.
    ``fuse_key``: annotations sharing this field (per image) are several workers' boxes of one
    object and also get one fused box; None disables fusion.
    ``max_pixels``: an image that would decode to more pixels (after JPEG draft reduction) is
    not decoded; its boxes are kept with reason ``image_too_large``. None: no budget.
    ``follow_links``: read images through symbolic links that lead outside the images folder
    (off: their boxes are kept with reason ``outside_images_dir`` and the file is never opened).
    ``snap.batch_size``: crops per forward pass, gathered across images.
    """

    chunk_images: int = 256  # images per chunk (the unit of resume and of fan-out in the flow)
    workers: int = 2  # DataLoader processes decoding + cropping; 0 = in the main process
    prefetch_factor: int = 4
    min_box_size: float = SNAP_MIN_BOX_SIZE
    review_threshold: float = 0.5
    review_moved_frac: float = 0.25
    fuse_key: str | None = "object_id"
    draft_decode: bool = True
    max_pixels: int | None = MAX_DECODE_PIXELS
    follow_links: bool = False
    # review_edges.csv: the edges least likely right, fewest-first; a whole number >= 1 of edges,
    # or a share in (0, 1) of the snapped edges. None: no such list.
    review_budget: float | None = None
    snap: SnapSettings = field(default_factory=lambda: SnapSettings(batch_size=BATCH_SNAP_BATCH))

    def __post_init__(self) -> None:
        # each of these would otherwise fail every box (as image_corrupt) or the job mid-run
        positive("chunk_images", self.chunk_images)
        non_negative("workers", self.workers)
        positive("prefetch_factor", self.prefetch_factor)
        non_negative("min_box_size", self.min_box_size)
        check(0.0 <= self.review_threshold <= 1.0, "review_threshold", "in [0, 1]", self.review_threshold)
        non_negative("review_moved_frac", self.review_moved_frac)
        optional_positive("max_pixels", self.max_pixels)
        check(self.review_budget is None or _budget_ok(self.review_budget), "review_budget",
              "a whole number >= 1 (edges), a share in (0, 1) of the snapped edges, or null", self.review_budget)


AUDIT_SCORES = ("conf_frac", "frac", "conf_px", "px")  # AuditConfig.score: snapper.evaluation.audit
AUDIT_BOX_SCORES = ("max", "top2")  # AuditConfig.box_score: a box's score from its edges' suspicion


@dataclass
class AuditConfig:
    """``snapper audit`` / the ``audit-dataset`` flow (:mod:`snapper.batch.audit`): every box of a
    dataset believed correct is snapped (``batch``: the batch-snap settings, its output folder is
    the audit's) and boxes are ranked by how likely an edge is misplaced
    (:mod:`snapper.evaluation.audit`).

    ``flag``: how many top suspects go to ``review.csv`` (and the contact sheet): a share in
    (0, 1) of the scored boxes, or a whole count >= 1. ``score``: the per-edge suspicion, one of
    :data:`AUDIT_SCORES` (``conf_frac``: confidence x the share of the box the edge is off by,
    beyond ``min_px``). The defaults (``conf_frac``, ``min_px=1``, ``top2``, ``batch.snap.flip``)
    ranked best on a selection split of held-out COCO (experiments/results/audit). ``min_px``: an
    edge off by less than this many px is not suspect. ``box_score``: a box's score, its largest
    edge suspicion (``max``) or the sum of its two largest (``top2``). ``suspect_ratio``: a flagged box's suspect
    edges are those with at least this share of its largest edge suspicion. ``sheet_max``: the
    most suspects drawn in ``audit_top.html`` (0: no sheet).
    """

    flag: float = 0.05
    score: str = "conf_frac"
    min_px: float = 1.0
    box_score: str = "top2"
    suspect_ratio: float = 0.5
    sheet_max: int = 60
    # flip: each crop also read mirrored (2x the model time); it ranked better on the selection split
    batch: BatchConfig = field(
        default_factory=lambda: BatchConfig(snap=SnapSettings(batch_size=BATCH_SNAP_BATCH, flip=True)))

    def __post_init__(self) -> None:
        check(_budget_ok(self.flag), "flag", "a share in (0, 1) of the scored boxes or a whole number >= 1",
              self.flag)
        one_of("score", self.score, AUDIT_SCORES)
        one_of("box_score", self.box_score, AUDIT_BOX_SCORES)
        non_negative("min_px", self.min_px)
        check(isinstance(self.suspect_ratio, (int, float)) and 0.0 < self.suspect_ratio <= 1.0, "suspect_ratio",
              "in (0, 1]", self.suspect_ratio)
        non_negative("sheet_max", self.sheet_max)


ADAPT_NOISE = ("auto", "measured", "paper")  # AdaptConfig.noise: auto = measured when rough boxes are given
MIN_ADAPT_TRAIN_IMAGES = 3  # `snapper adapt`: fewer gold images left to train on is refused


@dataclass
class AdaptConfig:
    """``snapper adapt`` / the ``adapt-snapper`` flow (:mod:`snapper.training.adapt`): the gold
    is split by image into train / selection / report (the report split scores every row and
    decides the champion; nothing trains or selects on it). ``base``: the model fine-tuned from
    (default: the production champion). ``steps`` / ``overrides``: on the ``finetune`` preset.
    ``replay``: shards trained on beside the gold, so that the fine-tune keeps what the base knew."""

    gold: str = ""
    images: str = ""
    name: str = ""
    rough: str | None = None
    base: str = "models:/snapper@champion"
    out_dir: str | None = None  # default runs/adapt/<name>
    select_fraction: float = 0.15
    report_fraction: float = 0.3
    seed: int = 0
    steps: int | None = None  # None: the finetune preset's
    noise: str = "auto"
    gold_only: bool = True  # also train the base's architecture on the gold alone (the "gold-only" row)
    register: bool = True
    device: str = "auto"
    overrides: list[str] = field(default_factory=list)
    replay: list[str] | None = None  # rehearsal shards beside the gold; None: the base's own if here
    replay_share: float = 0.4  # share of the shard draws that are replay shards (the rest: gold)

    def __post_init__(self) -> None:
        open_unit("select_fraction", self.select_fraction)
        open_unit("replay_share", self.replay_share)
        open_unit("report_fraction", self.report_fraction)
        check(self.select_fraction + self.report_fraction < 0.9, "select_fraction + report_fraction",
              "below 0.9 (the rest is trained on)", self.select_fraction + self.report_fraction)
        optional_positive("steps", self.steps)
        one_of("noise", self.noise, ADAPT_NOISE)
        check(bool(DEVICE_PATTERN.fullmatch(self.device)), "device", DEVICE_RULE, self.device)
