"""Device and numeric precision, one policy for training, snapping, evaluation and batch jobs.

``auto`` means: CUDA when present (bf16 autocast where the GPU has it, else fp16), plain fp32
on CPU, where bf16 is rarely faster and fp16 is not supported by every kernel.

Both devices use the channels_last (NHWC) memory format: cuDNN's fast convolutions want it,
and so do oneDNN's on CPU. On the idle 2-core dev machine (``bench/bench_model.py
--channels-last on|off [--amp]``, batch 32) NHWC made the demo model's bf16 training step
1.12x faster (one thread, 96 px); with the ``cpu`` preset's head at 128 px, the fp32 forward
pass (what snapping runs) 1.15-1.25x faster for EfficientNet-Lite0 and 1.02-1.04x for
ResNet-18, and Lite0's bf16 training step 0.92-0.98x (a few percent slower or even). Batch
snapping with the ``cpu`` preset's model ran 1.46x faster end to end (``bench/bench_snap.py``
against ``--nchw``).

Training (``TrainConfig.amp``) also autocasts to bf16 on a CPU with AMX tiles (Intel Sapphire
Rapids and later), where oneDNN runs bf16 convolutions in hardware: 1.3x the fp32 step of the
demo model on the 2-core dev machine (``bench/bench_model.py --amp``). Elsewhere bf16 is
emulated and slower, so CPU training stays fp32. Snapping stays fp32 on CPU (sub-pixel edge
positions are read from the logits).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from snapper.config import PRECISION_CHOICES as PRECISIONS
from snapper.errors import ConfigError


def resolve_device(device: "str | torch.device" = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU; a bare ``cuda`` gets
    the local rank's index (torchrun starts one process per GPU)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"device {device!r} is not a torch device (auto, cpu, cuda, cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = plain fp32)."""
    check_precision(precision)
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_has_amx() -> bool:
    """Whether this CPU runs bf16 matrix maths in hardware (AMX tiles); torch only says so
    through a private probe, so anything unexpected reads as no."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except Exception:  # noqa: BLE001 - an older/newer torch without the probe
        return False


def training_autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """Training's autocast dtype: ``auto`` on CUDA; bf16 on a CPU with AMX; else fp32."""
    if not amp:
        return None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_amx() else None
    return autocast_dtype(device, "auto")


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager[object]:
    """Autocast to ``dtype`` on ``device``; a no-op context for ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def use_channels_last(device: torch.device) -> bool:
    """NHWC for the model and its inputs (see the module doc for the CPU measurements)."""
    return device.type in ("cuda", "cpu")
