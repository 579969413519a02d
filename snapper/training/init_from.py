"""Fine-tuning from an existing model (``TrainConfig.init_from``): the architecture and the
starting weights come from that model; the optimiser and the schedule start fresh.

Why a model and not ImageNet: a user with a few hundred corrected boxes of their own domain
cannot train a box snapper from scratch (measured: from ImageNet on 50 raccoon images some boxes
are thrown far off), but can move the champion onto their data. The architecture is the
parent's; a ``model.*`` setting that contradicts it is refused naming the key, since weights of
one architecture cannot start another. Only a fresh run starts from the parent: a resumed run
continues from its own state.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from snapper.config import ModelConfig, TrainConfig
from snapper.errors import ConfigError
from snapper.models.checkpoint import check_weights_match, load_checkpoint
from snapper.models.reference import is_registry_ref, pin_model_ref, resolve_model
from snapper.overrides import inference_only_fields

log = logging.getLogger(__name__)

# Fields that say how the trunk is first initialised, not what it is: the parent's weights win.
INIT_FIELDS = {"weights"}


def parent_model(ref: str) -> tuple[str, ModelConfig]:
    """(the reference pinned to a version, the parent's model config), read from its checkpoint."""
    pinned = pin_model_ref(ref) if is_registry_ref(ref) else ref
    _, model_cfg, _ = load_checkpoint(resolve_model(pinned))
    return pinned, model_cfg


def with_parent_model(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its model config taken from ``cfg.init_from`` (pinned to a version, so a
    resume means the same parent). A ``model.*`` value set away from the dataclass default and
    different from the parent's is refused naming the key."""
    if not cfg.init_from:
        return cfg
    pinned, parent = parent_model(cfg.init_from)
    default, mine = ModelConfig(), cfg.model
    free = inference_only_fields(ModelConfig) | INIT_FIELDS
    clash = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in free
             and getattr(mine, f.name) != getattr(default, f.name) and getattr(mine, f.name) != getattr(parent, f.name)]
    if clash:
        k = clash[0]
        raise ConfigError(f"model.{k}={getattr(mine, k)!r}: the architecture comes from init_from {pinned} "
                          f"(model.{k}={getattr(parent, k)!r}); leave model.{k} unset (e.g. --preset finetune)")
    keep = {k: getattr(mine, k) for k in inference_only_fields(ModelConfig)}
    model = dataclasses.replace(parent, **keep)  # its weights field too: the trunk's first init, then the parent's
    return dataclasses.replace(cfg, init_from=pinned, model=model)


def load_parent_weights(net: torch.nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """The parent's weights into ``net``, strictly (a mismatch names the differing keys)."""
    path = resolve_model(cfg.init_from)  # type: ignore[arg-type]
    parent, _, meta = load_checkpoint(path)
    state = parent.state_dict()
    check_weights_match(net, state, str(path))
    net.load_state_dict(state)
    log.info("starting from %s (%s)", cfg.init_from, path)
    return meta
