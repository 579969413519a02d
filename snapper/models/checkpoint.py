"""Model checkpoints: a folder with ``model.pt`` (a plain state_dict) and ``config.json``.

A state_dict of tensors loads with ``torch.load(weights_only=True)``, so opening a checkpoint
from somewhere else cannot execute code; the architecture is rebuilt from ``config.json``.
Writes are atomic (temp file + ``os.replace``) so a killed job never leaves half a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from snapper.atomic import atomic_torch_save, atomic_write_text, atomic_write_with
from snapper.config import ModelConfig
from snapper.errors import BadModelError
from snapper.lineage import SIDECAR
from snapper.models.net import build_model
from snapper.overrides import from_dict, inference_only_fields, to_dict

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"


class CheckpointError(BadModelError, ValueError):
    """A checkpoint folder that cannot be used; the message names the file and the problem."""


class ModelNotFoundError(BadModelError, FileNotFoundError):
    """A reference that names no checkpoint (no such folder, a folder without ``config.json``
    or ``model.pt``, nothing registered under it)."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(
    path: str | os.PathLike[str], model: torch.nn.Module, cfg: ModelConfig, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``path/model.pt`` + ``path/config.json``; returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    atomic_torch_save(state, path / MODEL_FILE)
    meta = {"model": to_dict(cfg), "passes": list(cfg.passes), **(extra or {})}
    atomic_write_text(path / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True, default=str))
    return path


def copy_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str], cfg: ModelConfig,
                    extra: dict[str, Any] | None = None) -> Path:
    """A new checkpoint folder ``dst`` with the weights of ``src`` byte for byte (and its
    ``lineage.json``) under ``cfg``, which may differ from the saved config only in inference-only
    settings (a calibration): what the new folder claims about its weights stays true. The saved
    config.json's other keys are kept, ``extra`` added; config.json is written last."""
    src, dst = Path(src), Path(dst)
    saved, meta = read_config(src)
    changed = sorted(f.name for f in dataclasses.fields(ModelConfig) if f.name not in inference_only_fields(ModelConfig)
                     and getattr(saved, f.name) != getattr(cfg, f.name))
    if changed:
        raise ValueError(f"copy_checkpoint: {', '.join(changed)} would no longer describe the weights of {src}")
    dst.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, SIDECAR):
        if (src / name).is_file():
            atomic_write_with(dst / name, lambda tmp, f=src / name: shutil.copyfile(f, tmp))
    meta = {**meta, "model": to_dict(cfg), "passes": list(cfg.passes), **(extra or {})}
    atomic_write_text(dst / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True, default=str))
    return dst


# Model settings that earlier versions saved and that no longer mean anything: dropped on load
# so their checkpoints keep working (the weights do not depend on them).
OBSOLETE_MODEL_KEYS = ("confidence_radius",)  # -> confidence_px (in original pixels)


def read_config(path: str | os.PathLike[str]) -> tuple[ModelConfig, dict[str, Any]]:
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise ModelNotFoundError(f"{path}: not a snapper checkpoint (no {CONFIG_FILE})")
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model", {}), dict):
        raise CheckpointError(f"{cfg_file}: expected an object with a 'model' mapping")
    model = dict(meta.get("model", {}))
    for key in OBSOLETE_MODEL_KEYS:
        model.pop(key, None)
    try:
        return from_dict(ModelConfig, model), meta
    except ValueError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelConfig, dict[str, Any]]:
    """Rebuild the model from ``config.json`` and load ``model.pt`` (weights only)."""
    path = Path(path)
    cfg, meta = read_config(path)
    weights_file = path / MODEL_FILE
    if not weights_file.is_file():
        raise ModelNotFoundError(f"{path}: checkpoint has no {MODEL_FILE}")
    # The weights come from the checkpoint; never download pretrained ones to be overwritten.
    model = build_model(from_dict(ModelConfig, {**to_dict(cfg), "weights": None}))
    state = _read_weights(weights_file, map_location)
    check_weights_match(model, state, str(weights_file))
    model.load_state_dict(state)
    model.eval()
    return model, cfg, meta


def _read_weights(weights_file: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    """The state dict in ``weights_file``, or a CheckpointError saying what is wrong with it
    (torch's own message for a pickle advises ``weights_only=False``: exactly what not to do)."""
    if weights_file.stat().st_size == 0:
        raise CheckpointError(f"{weights_file}: empty file (an interrupted copy?)")
    try:
        state = torch.load(weights_file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{weights_file}: holds Python objects beyond tensors, refused (only plain "
                              "state_dicts load, so a checkpoint cannot run code); re-save it with save_checkpoint") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{weights_file}: not a readable torch file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{weights_file}: expected a state_dict of tensors, got {type(state).__name__}")
    return state


def check_weights_match(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights of another architecture with the differing keys named, not torch's wall of text."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or shapes:
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                 (("missing", missing), ("unexpected", extra), ("of another shape", shapes)) if v]
        raise CheckpointError(f"{where}: weights do not fit the architecture in {CONFIG_FILE}: " + "; ".join(parts))
