"""The read-out options of the snapping commands (``snap``, ``batch-snap``, ``evaluate``): each
one field of :class:`snapper.config.SnapSettings`, declared once here.

An option left unset leaves the config's value alone (its default, or a ``--set
snap.<field>=...``); one that is given wins over ``--set``. Every value is checked by the
dataclass before any work starts, and a bad one exits 2 in one line naming the option.
"""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

from snapper.cli.common import add_buffer_ratio_option, add_flip_option, apply_sets, positive_int
from snapper.config import DEVICE_RULE, PRECISION_CHOICES, SNAP_PASSES, SnapSettings
from snapper.errors import ConfigError
from snapper.overrides import apply_overrides

T = TypeVar("T")

SNAP_OPTIONS = ("device", "precision", "batch_size", "buffer_ratio", "passes", "flip", "guard")


def add_snap_options(p: argparse.ArgumentParser, defaults: SnapSettings, names: tuple[str, ...] = SNAP_OPTIONS) -> None:
    """``--device``, ``--precision``, ``--batch-size``, ``--buffer-ratio``, ``--passes``, ``--flip``, ``--no-guard``
    (those of ``names``), unset by default; ``defaults`` are the ones the help shows."""
    d = defaults
    if "device" in names:
        p.add_argument("--device", help=f"{DEVICE_RULE} (default {d.device})")
    if "precision" in names:
        p.add_argument("--precision", choices=PRECISION_CHOICES,
                       help=f"inference precision; auto: bf16/fp16 autocast on CUDA, fp32 on CPU (default {d.precision})")
    if "batch_size" in names:
        p.add_argument("--batch-size", type=positive_int, help=f"crops per forward pass (default {d.batch_size})")
    if "buffer_ratio" in names:
        add_buffer_ratio_option(p, None)
    if "passes" in names:
        p.add_argument("--passes", type=int, choices=SNAP_PASSES,
                       help=f"2 adds the zoom-in pass (models trained with model.zoom) (default {d.passes})")
    if "flip" in names:
        add_flip_option(p, None)
    if "guard" in names:
        p.add_argument("--no-guard", dest="guard", action="store_false", default=None,
                       help="turn the broken-box guard off (snap.guard=false): a collapsed or crossed box, or an "
                            f"edge moved more than snap.max_edge_move ({d.max_edge_move:g}) of the rough box, is "
                            "reported as the model decoded it instead of falling back to the rough box/edge")


def given(args: argparse.Namespace, keys: dict[str, str]) -> dict[str, tuple[str, Any]]:
    """The options of ``keys`` (argparse dest -> config key) that were given:
    ``{"--jitter-shift": ("jitter.shift", 0.2), ...}``."""
    return {f"--{dest.replace('_', '-')}": (key, getattr(args, dest)) for dest, key in keys.items()
            if getattr(args, dest, None) is not None}


def snap_options(args: argparse.Namespace, prefix: str = "snap.",
                 names: tuple[str, ...] = SNAP_OPTIONS) -> dict[str, tuple[str, Any]]:
    """The read-out options given: ``{"--device": ("snap.device", "cuda"), ...}``."""
    return given(args, {n: prefix + n for n in names})


def apply_options(parser: argparse.ArgumentParser, cfg: T, overrides: list[str],
                  options: dict[str, tuple[str, Any]]) -> T:
    """``cfg`` with the ``--set`` values, then the named options (``{"--flag": (key, value)}``,
    which win), checked before any work: a bad one exits 2 naming it."""
    cfg = apply_sets(parser, cfg, overrides)
    for flag, (key, value) in options.items():
        try:
            cfg = apply_overrides(cfg, {key: value})
        except ConfigError as e:
            parser.error(f"{flag}: {e}")
    return cfg
