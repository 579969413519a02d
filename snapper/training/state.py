"""What a training run needs to continue where it stopped: ``<out_dir>/train_state.pt``.

The file holds plain tensors and primitives only (model, weight-average, optimizer, scheduler
and scaler state dicts, step, every rank's RNG states, best score, config, history, MLflow run id), so
it loads with ``torch.load(weights_only=True)``: opening a run folder from somewhere else
cannot execute code. It is written atomically, so a killed job leaves the previous state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from snapper.atomic import atomic_torch_save
from snapper.config import ModelConfig, TrainConfig
from snapper.errors import ConfigError
from snapper.overrides import inference_only_fields, to_dict, upgrade_keys

log = logging.getLogger("snapper.training.loop")

STATE_FILE = "train_state.pt"
BEST_DIR = "best"  # the best-scoring checkpoint of a run (see snapper.training.loop)

# Settings whose change mid-run is allowed but alters the learning-rate schedule: warned about.
SCHEDULE_KEYS = ("steps", "lr", "warmup_steps", "batch_size")


# ---------------------------------------------------------------------------------- RNG


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


# -------------------------------------------------------------------------------- state


@dataclass
class TrainState:
    """One ``train_state.pt``. ``rng`` has one entry per rank; ``result`` is the finished
    call's report (checkpoints, metrics), so re-running a finished run can return it."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    rng: list[dict[str, Any]] = field(default_factory=list)
    best_score: float | None = None
    evals_since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    mlflow_run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    stopped_early: bool = False
    result: dict[str, Any] = field(default_factory=dict)
    ema: dict[str, torch.Tensor] = field(default_factory=dict)  # the AveragedModel's state (ema_decay)

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: that deep-copies every tensor of the model and optimizer.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        return atomic_torch_save(self.as_dict(), Path(out_dir) / STATE_FILE)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        """Tolerates files of earlier versions (missing keys keep their defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def load_state(out_dir: str | os.PathLike[str]) -> TrainState | None:
    """The run's saved state, None when it has none; a damaged file is an error naming it."""
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return TrainState.from_dict(data)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which
        raise RuntimeError(f"{path}: cannot load the training state ({type(e).__name__}: {e}); "
                           "delete it to start over") from e


def weight_fields() -> list[str]:
    """ModelConfig fields the weights depend on (all but the inference-only ones)."""
    skip = inference_only_fields(ModelConfig)
    return [f.name for f in dataclasses.fields(ModelConfig) if f.name not in skip]


def check_resumable(cfg: TrainConfig, state: TrainState, path: str | os.PathLike[str]) -> None:
    """Refuse to continue a run with a model its weights do not fit; warn about a changed
    schedule. Inference-only settings and keys that no longer exist do not count."""
    saved = state.config
    saved_model = upgrade_keys(ModelConfig, saved.get("model") or {})  # e.g. backbone -> trunk
    current = to_dict(cfg.model)
    # a field added since the run was saved is at its default there (e.g. model.zoom)
    defaults = to_dict(ModelConfig())
    if any(saved_model.get(k, defaults[k]) != current[k] for k in weight_fields()):
        raise ConfigError(f"{path}: the saved run used a different model config "
                         f"({saved.get('model')}) than this one ({current}); "
                         "use a new out_dir to train a different model")
    for key in SCHEDULE_KEYS:
        if key in saved and saved[key] != getattr(cfg, key):
            log.warning("resuming %s with %s=%s (was %s): the schedule changes from here on",
                        Path(path).parent, key, getattr(cfg, key), saved[key])


# What a finished run may be asked again with and still be the same run: where it lives, how it
# is logged and watched, what computes it. A difference anywhere else asks for another training.
SAME_RUN_KEYS = ("out_dir", "device", "compile", "log_every", "ckpt_every", "data.workers", "tracking.")


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def finished_conflicts(cfg: TrainConfig, state: TrainState) -> dict[str, tuple[Any, Any]]:
    """Settings of ``cfg`` that differ from those of a finished run (key -> (saved, asked)).

    A finished run trains no further, so asking it again for other settings would end having
    done nothing: the caller refuses instead. Keys on one side only (renamed or added since the
    run was saved) and inference-only model settings do not count."""
    skip = {f"model.{name}" for name in inference_only_fields(ModelConfig)}
    saved, asked = _flat(state.config), _flat(to_dict(cfg))
    return {k: (saved[k], v) for k, v in sorted(asked.items())
            if k in saved and saved[k] != v and k not in skip
            and not any(k == s or (s.endswith(".") and k.startswith(s)) for s in SAME_RUN_KEYS)}


def best_on_disk(out_dir: str | os.PathLike[str], best_score: float | None) -> float | None:
    """A kill between writing ``best/`` and the state leaves a newer best on disk: keep it."""
    try:
        meta = json.loads((Path(out_dir) / BEST_DIR / "config.json").read_text())
        score = meta.get("metrics", {}).get("score")
    except (OSError, ValueError):
        return best_score
    if score is None:
        return best_score
    return float(score) if best_score is None else max(float(score), best_score)
