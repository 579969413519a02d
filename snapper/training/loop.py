"""Training: a short explicit loop over reusable pieces (in the spirit of torchvision's
``references/detection``), for one CPU, one GPU, or many GPUs/processes under torchrun.

    from snapper.training.presets import preset_config
    from snapper.training.loop import train
    result = train(preset_config("cpu"))          # or: snapper train --preset cpu
    torchrun --nproc_per_node=4 -m snapper.cli train --preset gpu --set data.train_shards=[...]

The pieces: :mod:`snapper.training.presets` (configs), :mod:`snapper.training.schedule` (AdamW, warm-up +
cosine), :mod:`snapper.training.distributed` (DDP), :mod:`snapper.training.state` (resume),
:mod:`snapper.training.batches` (the stream), :mod:`snapper.training.validation` (model selection),
:mod:`snapper.training.log`, :mod:`snapper.training.progress` and :mod:`snapper.training.tracker` (history,
progress, MLflow). Registering the model is not training's business: it happens once the model
is evaluated (:mod:`snapper.mlops.lifecycle`).

Decisions (and why):

* **Devices** (:mod:`snapper.device`): ``device="auto"`` picks CUDA when present. On CUDA:
  autocast in bf16 where the card supports it, else fp16 with a GradScaler; channels_last;
  optional ``torch.compile``. On CPU: bf16 autocast where the CPU has AMX (1.3x the fp32
  step), else fp32 (emulated bf16 is slower than fp32 for these convs).
* **DDP** (``WORLD_SIZE > 1``, as set by torchrun): every rank runs exactly ``cfg.steps``
  steps, rank 0 alone logs, writes checkpoints and talks to MLflow. Validation runs on rank 0
  on the unwrapped module while the other ranks wait on a barrier: validation sets are small
  (``data.val_max_boxes``), and one process evaluating the whole set gives the same numbers
  whatever the world size.
* **Resumable**: ``<out_dir>/train_state.pt`` is written every ``ckpt_every`` steps and at
  the end. Re-running with the same ``out_dir`` continues from it; a finished run returns at
  once. The data stream is reseeded from (data seed, step) on resume, so it does not replay
  the samples already seen (losses after a resume are therefore close to, not identical
  with, an uninterrupted run's).
* **Weight average** (``ema_decay``, :mod:`snapper.training.ema`): when set, torch's ``AveragedModel``
  keeps an EMA of the weights; validation, ``best/`` and ``last/`` use it, ``train_state.pt``
  keeps both, so a resumed run continues the same average.
* **Model selection**: every ``eval_every`` steps the model is scored on ``data.val_shards``;
  ``<out_dir>/best`` keeps the best-scoring weights, ``<out_dir>/last`` the latest;
  ``patience`` (evaluations without improvement) stops early.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from snapper.atomic import atomic_write_text
from snapper.config import TrainConfig
from snapper.device import autocast, resolve_device, training_autocast_dtype, use_channels_last
from snapper.errors import ConfigError
from snapper.models.checkpoint import check_weights_match, read_config, save_checkpoint, unwrap
from snapper.models.net import build_model
from snapper.overrides import dump_yaml, to_dict
from snapper.training.batches import Batches, LoaderFactory, default_loader
from snapper.training.distributed import (
    DistInfo,
    barrier,
    broadcast_flag,
    gather_objects,
    init_distributed,
    mean_across,
    shutdown,
    sync_buffers,
    weights_digest,
)
from snapper.training.ema import build_ema
from snapper.training.init_from import load_parent_weights, with_parent_model
from snapper.training.log import HISTORY_FILE, STEP_LINE, LossWindow, append_history, fmt_duration, write_history
from snapper.training.progress import FAILED, FINISHED, RUNNING, STOPPED, Progress, ProgressCallback, write_progress
from snapper.training.schedule import build_optimizer
from snapper.training.state import (
    BEST_DIR,
    STATE_FILE,
    TrainState,
    best_on_disk,
    check_resumable,
    load_state,
    rng_state,
    seed_everything,
    set_rng_state,
)
from snapper.training.tracker import RunTracker
from snapper.training.validation import run_validation

log = logging.getLogger("snapper.training.loop")

RUN_CONFIG_FILE = "config.yaml"  # the run's resolved TrainConfig (a checkpoint's is models.checkpoint.CONFIG_FILE)
LAST_DIR = "last"


@dataclass
class TrainResult:
    out_dir: str
    last_checkpoint: str | None
    best_checkpoint: str | None  # = last_checkpoint when there is no validation data
    steps: int
    mlflow_run_id: str | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)
    best_score: float | None = None
    stopped_early: bool = False
    weights_digest: str | None = None  # sha256 of the final weights (identical on every DDP rank)
    stream_stats: dict[str, Any] = field(default_factory=dict)  # rank 0's samples delivered/skipped

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_config(cfg: TrainConfig, has_loader: bool = False) -> None:
    """Refuse a run that cannot start, before anything is written. (Every value's range is
    checked when the config is built, in :mod:`snapper.config`; what is left needs the run.)"""
    if not has_loader and not cfg.data.train_shards:
        raise ConfigError("data.train_shards is empty: pass shard paths/globs, e.g. "
                         "--set data.train_shards=[shards/train-000000.tar] (see 'snapper shard')")


def train(
    cfg: TrainConfig,
    *,
    max_steps_this_run: int | None = None,
    loader_factory: LoaderFactory | None = None,
    on_progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train (or resume, or return a finished run) into ``cfg.out_dir``.

    ``max_steps_this_run`` stops after that many optimizer steps in this call (state saved),
    e.g. to spread a run over time-limited jobs; the next call resumes. ``loader_factory``
    replaces :func:`snapper.data.train_stream.train_loader` (benchmarks, tests).
    ``on_progress`` gets every :class:`snapper.training.progress.Progress` rank 0 also writes
    to ``<out_dir>/progress.json``.
    """
    check_config(cfg, loader_factory is not None)
    cfg = with_parent_model(cfg)  # the parent's architecture, before a resume is compared with it
    info = init_distributed(resolve_device(cfg.device).type)
    try:
        device = resolve_device(cfg.device, info.local_rank)
        state = load_state(cfg.out_dir)
        if state is not None:
            check_resumable(cfg, state, Path(cfg.out_dir) / STATE_FILE)
            if state.finished:
                return _finished_result(cfg, state)
        loop = _Loop.start(cfg, info, device, state)
        loop.on_progress = on_progress
        return loop.run(max_steps_this_run, loader_factory or default_loader)
    finally:
        shutdown(info)


def _finished_result(cfg: TrainConfig, state: TrainState) -> TrainResult:
    out = Path(cfg.out_dir)
    log.info("%s: run already finished at step %d; nothing to do", out, state.step)
    if state.config.get("steps") != cfg.steps:
        log.warning("%s: steps=%d now but the finished run had %s; a longer schedule needs a new out_dir",
                    out, cfg.steps, state.config.get("steps"))
    r = state.result
    return TrainResult(
        out_dir=str(out), last_checkpoint=r.get("last_checkpoint"), best_checkpoint=r.get("best_checkpoint"),
        steps=int(state.step), mlflow_run_id=r.get("mlflow_run_id"), final_metrics=dict(r.get("final_metrics", {})), best_score=state.best_score,
        stopped_early=bool(state.stopped_early), weights_digest=r.get("weights_digest"),
        stream_stats=dict(r.get("stream_stats", {})))


@dataclass
class _Loop:
    """One call of :func:`train`: the model, its optimiser and the run's progress."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    net: torch.nn.Module  # the plain model (checkpoints, validation, loss)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    model: torch.nn.Module = field(init=False)  # ``net`` under DDP / torch.compile (forward, backward)
    ema: AveragedModel | None = None  # the weights' moving average (cfg.ema_decay), see snapper.training.ema
    tracker: RunTracker = field(init=False)
    step: int = 0
    best_score: float | None = None
    evals_since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    last_ckpt: str | None = None
    stopped_early: bool = False
    digest: str | None = None
    on_progress: ProgressCallback | None = None
    progress: Progress | None = None

    @property
    def out(self) -> Path:
        return Path(self.cfg.out_dir)

    @property
    def kept(self) -> torch.nn.Module:
        """The weights that are validated and written to ``best/`` and ``last/``."""
        return self.net if self.ema is None else self.ema.module

    @property
    def channels_last(self) -> bool:
        return self.cfg.channels_last and use_channels_last(self.device)

    @classmethod
    def start(cls, cfg: TrainConfig, info: DistInfo, device: torch.device, state: TrainState | None) -> "_Loop":
        """Seed, build (or restore) everything; the order of RNG draws is part of the result."""
        seed_everything(cfg.seed + info.rank)
        net = build_model(cfg.model)
        net.trunk_bn_frozen = cfg.freeze_trunk_bn
        if state is not None:  # a state of an older architecture version is refused by name
            check_weights_match(net, state.model, str(Path(cfg.out_dir) / "train_state.pt"))
            net.load_state_dict(state.model)
        elif cfg.init_from:  # a fresh fine-tuning run starts from its parent's weights
            load_parent_weights(net, cfg)
        net.to(device)
        if cfg.channels_last and use_channels_last(device):
            net = net.to(memory_format=torch.channels_last)
        net.train()
        optimizer, scheduler = build_optimizer(net, cfg, device)
        amp_dtype = training_autocast_dtype(device, cfg.amp)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        loop = cls(cfg, info, device, net, optimizer, scheduler, scaler, amp_dtype)
        if cfg.ema_decay is not None:
            loop.ema = build_ema(net, cfg.ema_decay)
        if state is not None:
            loop.restore(state)
        model: torch.nn.Module = net
        if info.enabled:
            # a zoom model's strip decoder is idle on a batch without strips
            model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                            find_unused_parameters=cfg.model.zoom)
        loop.model = torch.compile(model) if cfg.compile else model
        loop.tracker = RunTracker(cfg, cfg.tracking.enabled and info.is_main, loop.run_id)
        last = loop.out / LAST_DIR
        loop.last_ckpt = str(last) if last.is_dir() else None
        return loop

    def restore(self, state: TrainState) -> None:
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        if state.scaler:
            self.scaler.load_state_dict(state.scaler)
        self.step = int(state.step)
        if self.ema is not None:
            if state.ema:
                self.ema.load_state_dict(state.ema)
            else:
                log.info("%s: the saved run kept no weight average; it starts from the weights of step %d",
                         self.out, self.step)
        self.best_score = best_on_disk(self.out, state.best_score)
        self.evals_since_best = int(state.evals_since_best)
        self.history = [r for r in state.history if r["step"] <= self.step]
        self.run_id = state.mlflow_run_id
        if self.info.rank < len(state.rng):
            set_rng_state(state.rng[self.info.rank])
        log.info("%s: resuming at step %d/%d", self.out, self.step, self.cfg.steps)

    # ---------------------------------------------------------------------------- the run

    def run(self, max_steps_this_run: int | None, loader_factory: LoaderFactory) -> TrainResult:
        cfg, tracker = self.cfg, self.tracker
        stop_at = cfg.steps if max_steps_this_run is None else min(cfg.steps, self.step + max_steps_this_run)
        has_val = bool(cfg.data.val_shards)
        result: dict[str, Any] = {}
        failed = True
        try:
            self.write_run_files()
            if self.info.is_main:
                log.info("training on %s in %s%s", self.device, "fp32" if self.amp_dtype is None else
                         f"{str(self.amp_dtype).removeprefix('torch.')} autocast",
                         "" if self.ema is None else f"; validating and saving the weight average "
                         f"(ema_decay={cfg.ema_decay})")
            batches = Batches(cfg, self.step, self.info.rank, self.info.world_size, loader_factory)
            window = LossWindow(self.device, self.step)
            while self.step < stop_at:
                lr = self.train_step(batches.next(self.device), window)
                if self.step % cfg.log_every == 0 or self.step == stop_at:
                    self.log_window(window, lr)
                with window.paused():  # validation and checkpoints do not count as training time
                    if has_val and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                        if self.validate():
                            self.stopped_early = True
                            break
                    if self.step % cfg.ckpt_every == 0 and self.step < stop_at:
                        self.checkpoint()
            result = self.finish(batches)
            failed = False
        finally:
            tracker.close(failed=failed)
            if self.progress is not None:  # rank 0, once progress.json exists
                done = self.stopped_early or self.step >= cfg.steps
                self.report_progress(FAILED if failed else FINISHED if done else STOPPED)
        barrier(self.info, self.device)
        return TrainResult(
            out_dir=str(self.out), last_checkpoint=result.get("last_checkpoint", self.last_ckpt),
            best_checkpoint=result.get("best_checkpoint"), steps=self.step, mlflow_run_id=tracker.run_id,
            final_metrics=result.get("final_metrics", {}),
            best_score=self.best_score, stopped_early=self.stopped_early, weights_digest=self.digest,
            stream_stats=result.get("stream_stats", {}))

    def write_run_files(self) -> None:
        """config.yaml, history.jsonl cut back to the saved step, progress.json, and (fresh
        runs) MLflow params."""
        if not self.info.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / RUN_CONFIG_FILE, dump_yaml(self.cfg))
        write_history(self.out / HISTORY_FILE, self.history)
        self.report_progress(RUNNING)
        if self.step == 0:
            self.tracker.log_config(self.cfg)

    def report_progress(self, status: str, **numbers: float | None) -> None:
        """Rank 0: ``progress.json`` and the caller's ``on_progress`` (numbers not given keep
        their last value)."""
        if not self.info.is_main:
            return
        last = self.progress.to_json() if self.progress is not None else {}
        last.update({"step": self.step, "steps": self.cfg.steps, "status": status, "best_score": self.best_score,
                     **numbers})
        last.pop("updated", None)
        self.progress = Progress.from_json(last)
        write_progress(self.out, self.progress)
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def train_step(self, batch: dict[str, Any], window: LossWindow) -> float:
        """One optimizer step; returns the learning rate it used."""
        images = batch["image"]
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = batch["target"].float()
        strips = batch.get("strip")  # zoom-in strips (model.zoom), in the same forward call
        if strips is not None and self.channels_last:
            strips = strips.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            if strips is None:
                loss = self.net.loss(self.model(images), target)  # type: ignore[operator]
            else:
                out = self.model(images, strips)
                loss = self.net.loss(out, target, batch["strip_target"].float())  # type: ignore[operator]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip and self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        self.step += 1
        window.add(loss, int(images.shape[0]))
        return lr

    def log_window(self, window: LossWindow, lr: float) -> None:
        """The mean loss over ranks since the last line: log, history row, MLflow."""
        mean_loss = mean_across(self.info, window.mean_loss(), self.device)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"{self.out}: loss became {mean_loss} at step {self.step}; lower lr "
                                     "or check the data")
        rate = window.rate(self.info.world_size)
        eta = window.eta(self.step, self.cfg.steps)
        if self.info.is_main:
            log.info(STEP_LINE, self.step, self.cfg.steps, mean_loss, lr, rate, fmt_duration(eta))
            row = {"step": self.step, "loss": mean_loss, "lr": lr, "samples_per_s": rate}
            self.history.append(row)
            append_history(self.out / HISTORY_FILE, row)
            self.report_progress(RUNNING, loss=mean_loss, lr=lr, samples_per_s=rate, eta_s=eta)
            metrics = {"train/loss": mean_loss, "train/lr": lr, "train/samples_per_s": rate}
            self.tracker.log_metrics(metrics, self.step)
        window.reset()

    def validate(self) -> bool:
        """Score on the held-out shards (rank 0), keep a new best; True when it is time to stop."""
        if self.info.is_main:
            self.last_metrics = m = run_validation(self.kept, self.cfg, self.device)
            improved = self.best_score is None or m["score"] > self.best_score
            log.info("step %d validation: score %.2f (edge<1px %.1f, IoU>0.9 %.1f, mIoU %.1f)%s", self.step,
                     m["score"], m["all/edge_lt_1px"], m["all/iou_gt_0.9"], m["all/miou"],
                     " new best" if improved else "")
            self.tracker.log_metrics({f"val/{k}": v for k, v in m.items()}, self.step)
            if improved:
                self.best_score, self.evals_since_best = m["score"], 0
                save_checkpoint(self.out / BEST_DIR, self.kept, self.cfg.model,
                                extra={"step": self.step, "metrics": m, "train_config": to_dict(self.cfg)})
            else:
                self.evals_since_best += 1
            self.report_progress(RUNNING)
        patience = self.cfg.patience
        stop = self.info.is_main and patience is not None and self.evals_since_best >= patience
        barrier(self.info, self.device)
        if not broadcast_flag(self.info, stop, self.device):
            return False
        if self.info.is_main:
            log.info("early stop at step %d: no improvement in %d evaluations", self.step, patience)
        return True

    def save_last(self) -> None:
        self.last_ckpt = str(save_checkpoint(self.out / LAST_DIR, self.kept, self.cfg.model,
                                             extra={"step": self.step, "train_config": to_dict(self.cfg)}))

    def checkpoint(self) -> None:
        if self.info.is_main:
            self.save_last()
        self.save_state(finished=False)

    def save_state(self, finished: bool, result: dict[str, Any] | None = None) -> None:
        """A collective (every rank's RNG state is gathered): all ranks call it at the same steps."""
        rngs = gather_objects(self.info, rng_state())
        if not self.info.is_main:
            return
        TrainState(
            model={k: v.detach().cpu() for k, v in unwrap(self.net).state_dict().items()},
            ema={} if self.ema is None else {k: v.detach().cpu() for k, v in self.ema.state_dict().items()},
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), step=self.step, rng=rngs, best_score=self.best_score,
            evals_since_best=self.evals_since_best, history=self.history,
            mlflow_run_id=self.tracker.run_id,
            config=to_dict(self.cfg), finished=finished, stopped_early=self.stopped_early,
            result=result or {},
        ).save(self.out)

    # ------------------------------------------------------------------------- the end

    def finish(self, batches: Batches) -> dict[str, Any]:
        """End of this call: identical weights on every rank, final checkpoint, state, report."""
        finished = self.stopped_early or self.step >= self.cfg.steps
        sync_buffers(self.info, self.net)
        self.digest = weights_digest(self.net)
        result = self.report(batches, finished) if self.info.is_main else {}
        self.save_state(finished, result)
        return result

    def report(self, batches: Batches, finished: bool) -> dict[str, Any]:
        """Rank 0: last checkpoint, stream accounting and, for a finished run, the final
        metrics and files in MLflow."""
        tracker = self.tracker
        self.save_last()
        has_val = bool(self.cfg.data.val_shards)
        best_dir = self.out / BEST_DIR
        best_ckpt = (str(best_dir) if best_dir.is_dir() else None) if has_val else self.last_ckpt
        stream_stats = batches.stats() or {}
        if stream_stats:
            log.info("training stream (rank 0) this call: %s", stream_stats)
        result: dict[str, Any] = {
            "last_checkpoint": self.last_ckpt, "best_checkpoint": best_ckpt, "stream_stats": stream_stats,
            "mlflow_run_id": tracker.run_id, "weights_digest": self.digest, "final_metrics": {}}
        if not finished:
            return result
        final = dict(self.last_metrics)
        if has_val and best_ckpt is not None:
            best_metrics = read_config(best_ckpt)[1].get("metrics", {})
            final = {f"best/{k}": float(v) for k, v in best_metrics.items()}
            final.update({f"last/{k}": float(v) for k, v in self.last_metrics.items()})
        result["final_metrics"] = final
        tracker.log_metrics(final, self.step)
        tracker.log_artifact(self.out / RUN_CONFIG_FILE)
        tracker.log_artifact(self.out / HISTORY_FILE)
        return result
