"""Training: a short explicit loop over reusable pieces (in the spirit of torchvision's
``references/detection``), for one CPU, one GPU, or many GPUs/processes under torchrun.

    from snapper.train import train, preset_config
    result = train(preset_config("cpu"))          # or: snapper train --preset cpu
    torchrun --nproc_per_node=4 -m snapper.cli train --preset gpu --set data.train_shards=[...]

Decisions (and why):

* **Optimisation**: AdamW (no weight decay on norms/biases), linear warm-up then cosine decay
  to 0 over ``cfg.steps`` optimizer steps, gradient clipping. The learning rate is a pure
  function of the step, so a resumed run follows exactly the schedule of an uninterrupted one.
* **Devices**: ``device="auto"`` picks CUDA when present. On CUDA: autocast in bf16 where the
  card supports it, else fp16 with a GradScaler; channels_last; optional ``torch.compile``.
  On CPU everything runs in fp32 (CPU autocast is slower than fp32 for these convs).
* **DDP** (``WORLD_SIZE > 1``, as set by torchrun): process group from the environment, NCCL
  on CUDA, gloo on CPU. There is no DistributedSampler: the WebDataset stream splits shards
  by rank and every rank runs exactly ``cfg.steps`` steps (an exhausted stream is restarted
  with a new seed), so ranks never fall out of lockstep. Rank 0 alone logs, writes
  checkpoints and talks to MLflow. Validation runs on rank 0 on the unwrapped module while
  the other ranks wait on a barrier: validation sets are small (``data.val_max_boxes``), and
  one process evaluating the whole set gives the same numbers whatever the world size.
* **Resumable**: ``<out_dir>/train_state.pt`` (model, optimizer, scheduler, scaler, step, RNG
  states, best metric, config, history) is written atomically every ``ckpt_every`` steps and
  at the end, as plain tensors and primitives so it loads with ``torch.load(weights_only=True)``.
  Re-running with the same ``out_dir`` continues from it; a finished run returns at once.
  The data stream is reseeded from (data seed, step) on resume, so it does not replay the
  samples already seen (losses after a resume are therefore close to, not identical with,
  an uninterrupted run's).
* **Model selection**: every ``eval_every`` steps the model is scored on ``data.val_shards``
  (held-out images, deterministic jitter): score = mean of "edge < 1 px" and "IoU > 0.9"
  (both in percent). ``<out_dir>/best`` keeps the best-scoring weights, ``<out_dir>/last``
  the latest; ``patience`` (evaluations without improvement) stops early.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from snapper.atomic import atomic_torch_save, atomic_write_text
from snapper.checkpoint import save_checkpoint, unwrap
from snapper.device import autocast_dtype as autocast_dtype_for, resolve_device
from snapper.config import EvalConfig, TrainConfig, apply_overrides, from_dict, to_dict

log = logging.getLogger("snapper.train")

STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.jsonl"
LAST_DIR = "last"
BEST_DIR = "best"
SCORE_NAME = "val/score"

# ------------------------------------------------------------------------------------ presets

# Presets are partial TrainConfig dicts applied before a YAML file and --set overrides.
PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop: smoke tests, CI, demos of the pipeline (not of accuracy).
    "cpu-tiny": {
        "model": {"backbone": "resnet18", "input_size": 48, "fpn_channels": 16, "decoder_channels": 16,
                  "decoder_layers": 2},
        "data": {"workers": 0, "boxes_per_image": 4, "shuffle_buffer": 32, "val_max_boxes": 64},
        "batch_size": 8, "steps": 40, "warmup_steps": 5, "lr": 2e-3,
        "log_every": 5, "ckpt_every": 20, "eval_every": 20,
    },
    # The embedded demo (`make demo`, train-snapper/demo): synthetic scenes, ~3 min per model on
    # 2 cores, already far past the rough boxes (README "Results").
    "demo": {
        "model": {"backbone": "resnet18", "input_size": 96, "fpn_channels": 32, "decoder_channels": 32,
                  "decoder_layers": 2},
        "data": {"workers": 2, "val_max_boxes": 500},
        "batch_size": 32, "steps": 500, "warmup_steps": 50, "lr": 2e-3,
        "log_every": 20, "ckpt_every": 100, "eval_every": 250,
    },
    # The SPEC's CPU prototype (ResNet-18, 128 px, batch 32, AdamW 2e-3, cosine): ~30 min on 2 cores.
    "cpu": {
        "model": {"backbone": "resnet18", "input_size": 128, "fpn_channels": 64, "decoder_channels": 64,
                  "decoder_layers": 2},
        "data": {"workers": 2, "val_max_boxes": 500},
        "batch_size": 32, "steps": 1500, "warmup_steps": 100, "lr": 2e-3,
        "log_every": 20, "ckpt_every": 100, "eval_every": 250,
    },
    # The published design: ResNet-50 at the ModelConfig defaults; AMP + channels_last on CUDA.
    "gpu": {
        "model": {"backbone": "resnet50"},
        "data": {"workers": 8, "val_max_boxes": 5000, "shuffle_buffer": 1024},
        "batch_size": 64, "steps": 20000, "warmup_steps": 500, "lr": 2e-3,
        "amp": True, "channels_last": True, "log_every": 50, "ckpt_every": 500, "eval_every": 1000,
    },
}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_config(name: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A TrainConfig from a named preset (None = the dataclass defaults) plus a partial dict."""
    base: dict[str, Any] = {}
    if name is not None:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        base = PRESETS[name]
    return from_dict(TrainConfig, _deep_merge(base, overrides or {}))


# ------------------------------------------------------------------------------------ results


@dataclass
class TrainResult:
    out_dir: str
    last_checkpoint: str | None
    best_checkpoint: str | None  # = last_checkpoint when there is no validation data
    steps: int
    mlflow_run_id: str | None = None
    registered_version: str | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)
    best_score: float | None = None
    stopped_early: bool = False
    weights_digest: str | None = None  # sha256 of the final weights (identical on every DDP rank)
    stream_stats: dict[str, Any] = field(default_factory=dict)  # rank 0's samples delivered/skipped

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------ small pieces


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base LR for optimizer step ``step`` (0-based): linear warm-up from
    1/warmup to 1, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(cfg: TrainConfig, step: int) -> float:
    return cfg.lr * lr_factor(step, cfg.warmup_steps, cfg.steps)


def derive_seed(seed: int, step: int) -> int:
    """A stream seed for a (re)start at ``step``; step 0 keeps the configured seed."""
    if step == 0:
        return int(seed)
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norm scales (1-D tensors): decaying them only hurts."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(unwrap(model).state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if v.numel() else b"")
    return h.hexdigest()


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, False)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    # Validation runs on rank 0 while the others wait: allow it more than the default timeout.
    dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=60))
    return DistInfo(rank, world, local, True)


def _barrier(info: DistInfo, device: torch.device) -> None:
    if info.enabled:
        import torch.distributed as dist

        if device.type == "cuda":
            dist.barrier(device_ids=[device.index or 0])
        else:
            dist.barrier()


def _broadcast_flag(info: DistInfo, value: bool, device: torch.device) -> bool:
    """Rank 0's decision (e.g. early stop) for every rank."""
    if not info.enabled:
        return value
    import torch.distributed as dist

    t = torch.tensor([1.0 if value else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0.5)


def _sync_buffers(info: DistInfo, net: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), as DDP does at each forward:
    after the last step each rank still holds its own, and all ranks should end identical."""
    if not info.enabled:
        return
    import torch.distributed as dist

    for b in net.buffers():
        dist.broadcast(b.data, src=0)


def _mean_across(info: DistInfo, value: float, device: torch.device) -> float:
    if not info.enabled:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


# ---------------------------------------------------------------------------- RNG and state


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors/primitives (safe for ``weights_only=True``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_state(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which
        raise RuntimeError(f"{path}: cannot load the training state ({type(e).__name__}: {e}); "
                           "delete it to start over") from e


def _check_resumable(cfg: TrainConfig, state: dict[str, Any], path: Path) -> None:
    from snapper.checkpoint import OBSOLETE_MODEL_KEYS

    saved = state.get("config", {})
    saved_model = {k: v for k, v in (saved.get("model") or {}).items() if k not in OBSOLETE_MODEL_KEYS}
    current = {k: v for k, v in to_dict(cfg.model).items() if k in saved_model or k not in ("confidence_px",)}
    if saved_model != current:
        raise ValueError(f"{path}: the saved run used a different model config "
                         f"({saved.get('model')}) than this one ({to_dict(cfg.model)}); "
                         "use a new out_dir to train a different model")
    for key in ("steps", "lr", "warmup_steps", "batch_size"):
        if key in saved and saved[key] != getattr(cfg, key):
            log.warning("resuming %s with %s=%s (was %s): the schedule changes from here on",
                        path.parent, key, getattr(cfg, key), saved[key])


# -------------------------------------------------------------------------------- data


LoaderFactory = Callable[[TrainConfig, int, int], Iterable[dict[str, Any]]]


def _default_loader(cfg: TrainConfig, rank: int, world_size: int) -> Iterable[dict[str, Any]]:
    from snapper.data.stream import train_loader

    return train_loader(cfg, rank=rank, world_size=world_size)


class Batches:
    """Endless training batches for one rank.

    The loader is built once per call of :func:`train`, with its data seed derived from
    (data seed, first step), so a resumed run sees fresh samples rather than a replay; each
    pass over it is one epoch (``TrainLoader`` advances its own epoch counter). Batches go to
    the device through the loader's ``to_device`` when it has one (``crop_on="device"``
    cuts crops there).
    """

    def __init__(self, cfg: TrainConfig, start_step: int, info: DistInfo, factory: LoaderFactory):
        data = dataclasses.replace(cfg.data, seed=derive_seed(cfg.data.seed, start_step))
        self.loader = factory(dataclasses.replace(cfg, data=data), info.rank, info.world_size)
        self.rank = info.rank
        self.shards = cfg.data.train_shards
        self._it: Iterator[dict[str, Any]] | None = None
        self._n_this_epoch = 0

    def next(self, device: torch.device) -> dict[str, Any]:
        while True:
            if self._it is None:
                self._it, self._n_this_epoch = iter(self.loader), 0
            try:
                batch = next(self._it)
            except StopIteration:
                if self._n_this_epoch == 0:
                    raise RuntimeError(f"the training stream yielded no batch (rank {self.rank}); check "
                                       f"data.train_shards={self.shards!r}") from None
                self._it = None
                continue
            self._n_this_epoch += 1
            to_device = getattr(self.loader, "to_device", None)
            if to_device is not None:
                return to_device(batch, device)
            return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in batch.items()}

    def stats(self) -> dict[str, Any] | None:
        s = getattr(self.loader, "stats", None)
        return s.as_dict() if s is not None and hasattr(s, "as_dict") else None


# --------------------------------------------------------------------------- validation


def validation_config(cfg: TrainConfig) -> EvalConfig:
    return EvalConfig(shards=list(cfg.data.val_shards), jitter=cfg.jitter, batch_size=max(cfg.batch_size, 32),
                      max_boxes=cfg.data.val_max_boxes, workers=0, seed=0, device=cfg.device)


def validation_score(metrics: dict[str, float]) -> float:
    return 0.5 * (metrics["all/edge_lt_1px"] + metrics["all/iou_gt_0.9"])


def run_validation(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Table 1 on the held-out shards, flat names (``all/miou``...) plus ``score``."""
    from snapper.evaluate import evaluate_model
    from snapper.metrics import summarize, summary_metrics

    net = unwrap(model)
    was_training = net.training
    try:
        df = evaluate_model(net, cfg.model, validation_config(cfg), method="val", device=device)
    finally:
        net.train(was_training)
    if len(df) == 0:
        raise RuntimeError(f"validation produced no boxes from data.val_shards={cfg.data.val_shards!r}")
    metrics = summary_metrics(summarize(df, buckets=False))
    metrics["score"] = validation_score(metrics)
    return metrics


# ------------------------------------------------------------------------------ tracking


class _Tracker:
    """MLflow on rank 0 only, through snapper.tracking; a no-op when disabled."""

    def __init__(self, cfg: TrainConfig, enabled: bool, run_id: str | None):
        self.enabled = enabled
        self.run_id = run_id
        self._ctx: Any = None
        if not enabled:
            return
        from snapper import tracking

        self.tracking = tracking
        tracking.configure()
        tags = {"snapper.out_dir": str(Path(cfg.out_dir).resolve()), "snapper.head": cfg.model.head}
        # Inside a caller's run (a pipeline's), training is a nested run of it.
        mlflow = sys.modules.get("mlflow")
        nested = mlflow is not None and mlflow.active_run() is not None
        self._ctx = tracking.start_run(cfg.experiment, cfg.run_name or Path(cfg.out_dir).name, tags,
                                       run_id=run_id, nested=nested)
        run = self._ctx.__enter__()
        self.run_id = run.info.run_id

    def log_config(self, cfg: TrainConfig) -> None:
        if self.enabled:
            self.tracking.log_config(cfg)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled and metrics:
            self.tracking.log_metrics(metrics, step=step)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        if self.enabled:
            self.tracking.log_artifact(path, artifact_path)

    def register(self, checkpoint: str, name: str) -> str | None:
        if not self.enabled:
            return None
        return str(self.tracking.register_checkpoint(self.run_id, checkpoint, name))

    def close(self, failed: bool = False) -> None:
        if self._ctx is not None:
            exc = (RuntimeError, RuntimeError("training failed"), None) if failed else (None, None, None)
            self._ctx.__exit__(*exc)
            self._ctx = None


# --------------------------------------------------------------------------------- train


def _result_from_state(cfg: TrainConfig, state: dict[str, Any]) -> TrainResult:
    out = Path(cfg.out_dir)
    info = state.get("result", {})
    return TrainResult(
        out_dir=str(out), last_checkpoint=info.get("last_checkpoint"), best_checkpoint=info.get("best_checkpoint"),
        steps=int(state["step"]), mlflow_run_id=info.get("mlflow_run_id"),
        registered_version=info.get("registered_version"), final_metrics=dict(info.get("final_metrics", {})),
        best_score=state.get("best_score"), stopped_early=bool(state.get("stopped_early", False)),
        weights_digest=info.get("weights_digest"), stream_stats=dict(info.get("stream_stats", {})))


def _best_on_disk(out: Path, best_score: float | None) -> float | None:
    """A kill between writing ``best/`` and the state leaves a newer best on disk: keep it."""
    try:
        score = json.loads((out / BEST_DIR / "config.json").read_text()).get("metrics", {}).get("score")
    except (OSError, ValueError):
        return best_score
    if score is None:
        return best_score
    return float(score) if best_score is None else max(float(score), best_score)


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def train(
    cfg: TrainConfig,
    *,
    max_steps_this_run: int | None = None,
    loader_factory: LoaderFactory | None = None,
) -> TrainResult:
    """Train (or resume, or return a finished run) into ``cfg.out_dir``.

    ``max_steps_this_run`` stops after that many optimizer steps in this call (state saved),
    e.g. to spread a run over time-limited jobs; the next call resumes. ``loader_factory``
    replaces :func:`snapper.data.stream.train_loader` (benchmarks, tests).
    """
    if cfg.steps <= 0:
        raise ValueError(f"steps must be positive, got {cfg.steps}")
    if cfg.batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {cfg.batch_size}")
    for name in ("log_every", "ckpt_every", "eval_every"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
    if loader_factory is None and not cfg.data.train_shards:
        raise ValueError("data.train_shards is empty: pass shard paths/globs, e.g. "
                         "--set data.train_shards=[shards/train-000000.tar] (see 'snapper shard')")
    probe = resolve_device(cfg.device)
    dist_info = init_distributed(probe.type)
    try:
        return _train(cfg, dist_info, max_steps_this_run, loader_factory or _default_loader)
    finally:
        if dist_info.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(cfg: TrainConfig, info: DistInfo, max_steps_this_run: int | None,
           loader_factory: LoaderFactory) -> TrainResult:
    from snapper.model import build_model

    device = resolve_device(cfg.device, info.local_rank)
    out = Path(cfg.out_dir)
    state_path = out / STATE_FILE
    state = load_state(out)
    if state is not None:
        _check_resumable(cfg, state, state_path)
        if state.get("finished"):
            log.info("%s: run already finished at step %d; nothing to do", out, state["step"])
            if state.get("config", {}).get("steps") != cfg.steps:
                log.warning("%s: steps=%d now but the finished run had %s; a longer schedule needs a new out_dir",
                            out, cfg.steps, state.get("config", {}).get("steps"))
            return _result_from_state(cfg, state)

    seed_everything(cfg.seed + info.rank)
    model = build_model(cfg.model)
    if state is not None:
        model.load_state_dict(state["model"])
    model.to(device)
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  **({"fused": True} if device.type == "cuda" else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps))
    autocast_dtype = autocast_dtype_for(device, "auto" if cfg.amp else "fp32")
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)

    step = 0
    best_score: float | None = None
    evals_since_best = 0
    history: list[dict[str, Any]] = []
    run_id: str | None = None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        best_score = state.get("best_score")
        best_score = _best_on_disk(out, best_score)
        evals_since_best = int(state.get("evals_since_best", 0))
        history = [r for r in state.get("history", []) if r["step"] <= step]
        run_id = state.get("mlflow_run_id")
        rng = state.get("rng", {})
        if info.rank < len(rng):
            set_rng_state(rng[info.rank])
        log.info("%s: resuming at step %d/%d", out, step, cfg.steps)

    net = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)

    tracker = _Tracker(cfg, cfg.mlflow and info.is_main, run_id)

    def gather_rng() -> list[dict[str, Any]]:
        mine = rng_state()
        if not info.enabled:
            return [mine]
        import torch.distributed as dist

        every: list[Any] = [None] * info.world_size
        dist.all_gather_object(every, mine)
        return every

    def save_state(finished: bool, stopped_early: bool, result: dict[str, Any] | None = None) -> None:
        rngs = gather_rng()  # collective: every rank calls save_state at the same steps
        if not info.is_main:
            return
        atomic_torch_save({
            "model": {k: v.detach().cpu() for k, v in unwrap(net).state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "rng": rngs,
            "best_score": best_score,
            "evals_since_best": evals_since_best,
            "history": history,
            "mlflow_run_id": tracker.run_id,
            "config": to_dict(cfg),
            "finished": finished,
            "stopped_early": stopped_early,
            "result": result or {},
        }, state_path)

    has_val = bool(cfg.data.val_shards)
    stop_at = cfg.steps if max_steps_this_run is None else min(cfg.steps, step + max_steps_this_run)
    stopped_early = False
    last_metrics: dict[str, float] = {}
    last_ckpt: str | None = str(out / LAST_DIR) if (out / LAST_DIR).is_dir() else None
    failed = True
    try:
        if info.is_main:
            import yaml

            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False))
            _write_history(out / HISTORY_FILE, history)
            if step == 0:
                tracker.log_config(cfg)
        batches = Batches(cfg, step, info, loader_factory)
        # The loss stays on the device between log lines: no host sync per step on CUDA.
        window_loss = torch.zeros((), device=device, dtype=torch.float64 if device.type == "cpu" else torch.float32)
        window_n, window_samples, window_t0 = 0, 0, time.perf_counter()
        run_t0, run_start_step = window_t0, step
        while step < stop_at:
            batch = batches.next(device)
            images = batch["image"]
            if device.type == "cuda" and cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            target = batch["target"].float()
            with (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()):
                loss = net.loss(model(images), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip and cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            window_loss += loss.detach()
            window_n += 1
            window_samples += int(images.shape[0])

            if step % cfg.log_every == 0 or step == stop_at:
                mean_loss = _mean_across(info, float(window_loss) / window_n, device)
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"{out}: loss became {mean_loss} at step {step}; lower lr "
                                             "or check the data")
                now = time.perf_counter()
                rate = window_samples * info.world_size / max(now - window_t0, 1e-9)
                per_step = (now - run_t0) / max(step - run_start_step, 1)
                eta = per_step * (cfg.steps - step)
                if info.is_main:
                    log.info("step %d/%d loss %.4f lr %.3g %.1f samples/s eta %s", step, cfg.steps, mean_loss,
                             lr, rate, _fmt_duration(eta))
                    row = {"step": step, "loss": mean_loss, "lr": lr, "samples_per_s": rate}
                    history.append(row)
                    with open(out / HISTORY_FILE, "a") as f:
                        f.write(json.dumps(row, sort_keys=True) + "\n")
                    tracker.log_metrics({"train/loss": mean_loss, "train/lr": lr, "train/samples_per_s": rate}, step)
                window_loss.zero_()
                window_n, window_samples, window_t0 = 0, 0, time.perf_counter()

            pause_t0 = time.perf_counter()  # validation and checkpoints do not count as training time
            if has_val and (step % cfg.eval_every == 0 or step == cfg.steps):
                improved = False
                if info.is_main:
                    last_metrics = run_validation(net, cfg, device)
                    score = last_metrics["score"]
                    improved = best_score is None or score > best_score
                    log.info("step %d validation: score %.2f (edge<1px %.1f, IoU>0.9 %.1f, mIoU %.1f)%s", step,
                             score, last_metrics["all/edge_lt_1px"], last_metrics["all/iou_gt_0.9"],
                             last_metrics["all/miou"], " new best" if improved else "")
                    tracker.log_metrics({f"val/{k}": v for k, v in last_metrics.items()}, step)
                    if improved:
                        best_score = score
                        evals_since_best = 0
                        save_checkpoint(out / BEST_DIR, net, cfg.model,
                                        extra={"step": step, "metrics": last_metrics, "train_config": to_dict(cfg)})
                    else:
                        evals_since_best += 1
                stop = info.is_main and cfg.patience is not None and evals_since_best >= cfg.patience
                _barrier(info, device)
                if _broadcast_flag(info, stop, device):
                    stopped_early = True
                    if info.is_main:
                        log.info("early stop at step %d: no improvement in %d evaluations", step, cfg.patience)
                    break

            if step % cfg.ckpt_every == 0 and step < stop_at:
                if info.is_main:
                    last_ckpt = str(save_checkpoint(out / LAST_DIR, net, cfg.model,
                                                    extra={"step": step, "train_config": to_dict(cfg)}))
                save_state(False, False)
            window_t0 += time.perf_counter() - pause_t0

        # ---- end of this call: final checkpoint, state, and (when finished) the report
        finished = stopped_early or step >= cfg.steps
        _sync_buffers(info, net)
        digest = weights_digest(net)
        result: dict[str, Any] = {}
        if info.is_main:
            last_ckpt = str(save_checkpoint(out / LAST_DIR, net, cfg.model,
                                            extra={"step": step, "train_config": to_dict(cfg)}))
            best_ckpt = str(out / BEST_DIR) if (out / BEST_DIR).is_dir() else None
            if not has_val:
                best_ckpt = last_ckpt
            stream_stats = batches.stats() or {}
            if stream_stats:
                log.info("training stream (rank 0) this call: %s", stream_stats)
            result = {"last_checkpoint": last_ckpt, "best_checkpoint": best_ckpt, "stream_stats": stream_stats,
                      "mlflow_run_id": tracker.run_id, "weights_digest": digest, "final_metrics": {}}
            if finished:
                final = dict(last_metrics)
                if has_val and best_ckpt is not None:
                    best_meta = json.loads((Path(best_ckpt) / "config.json").read_text())
                    final = {f"best/{k}": float(v) for k, v in best_meta.get("metrics", {}).items()}
                    final.update({f"last/{k}": float(v) for k, v in last_metrics.items()})
                result["final_metrics"] = final
                tracker.log_metrics(final, step)
                tracker.log_artifact(out / CONFIG_FILE)
                tracker.log_artifact(out / HISTORY_FILE)
                if cfg.registered_model and tracker.enabled and best_ckpt is not None:
                    result["registered_version"] = tracker.register(best_ckpt, cfg.registered_model)
                    log.info("registered %s as model %r version %s", best_ckpt, cfg.registered_model,
                             result["registered_version"])
        save_state(finished, stopped_early, result)
        failed = False
    finally:
        tracker.close(failed=failed)
    _barrier(info, device)
    res = TrainResult(
        out_dir=str(out), last_checkpoint=result.get("last_checkpoint", last_ckpt),
        best_checkpoint=result.get("best_checkpoint"), steps=step, mlflow_run_id=tracker.run_id,
        registered_version=result.get("registered_version"), final_metrics=result.get("final_metrics", {}),
        best_score=best_score, stopped_early=stopped_early, weights_digest=digest,
        stream_stats=result.get("stream_stats", {}))
    return res


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


# ----------------------------------------------------------------------------------- CLI


def build_config(preset: str | None, config_file: str | None, overrides: list[str],
                 out_dir: str | None = None) -> TrainConfig:
    """preset -> YAML file -> ``--set`` overrides -> ``--out-dir``, later ones winning."""
    import yaml

    data: dict[str, Any] = dict(PRESETS[preset]) if preset else {}
    if preset and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}")
    if config_file:
        with open(config_file) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: expected a mapping at the top level")
        data = _deep_merge(data, loaded)
    cfg = from_dict(TrainConfig, data)
    cfg = apply_overrides(cfg, list(overrides))
    if out_dir:
        cfg = dataclasses.replace(cfg, out_dir=out_dir)
    return cfg


def cli_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="snapper train",
        description="Train a Snapper model (resumes when --out-dir holds a train_state.pt). "
                    "Multi-GPU/multi-process: torchrun --nproc_per_node=N -m snapper.cli train ...")
    p.add_argument("--preset", choices=sorted(PRESETS), help="starting point, before --config and --set")
    p.add_argument("--config", help="YAML file with (part of) a TrainConfig")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set model.head=regression --set data.train_shards=[a.tar]")
    p.add_argument("--out-dir")
    p.add_argument("--max-steps-this-run", type=int, help="stop after this many steps (resumable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    args = p.parse_args(argv)
    try:
        cfg = build_config(args.preset, args.config, args.overrides, args.out_dir)
    except (ValueError, OSError) as e:
        print(f"snapper train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        logging.getLogger("snapper").setLevel(logging.WARNING)
    try:
        result = train(cfg, max_steps_this_run=args.max_steps_this_run)
    except (ValueError, FileNotFoundError) as e:  # bad config or data, named in the message
        print(f"snapper train: {e}", file=sys.stderr)
        return 2
    if rank == 0:
        print(json.dumps(result.to_json(), indent=2))
    return 0
