"""The one device/precision policy."""

from __future__ import annotations

import pytest
import torch

from snapper import device
from snapper.device import autocast, autocast_dtype, resolve_device, training_autocast_dtype, use_channels_last


def test_auto_is_cpu_without_cuda_and_fp32_there() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    dev = resolve_device("auto")
    assert dev == torch.device("cpu")
    assert autocast_dtype(dev, "auto") is None and use_channels_last(dev)  # oneDNN's NHWC kernels
    assert autocast_dtype(dev, "bf16") == torch.bfloat16 and autocast_dtype(dev, "fp32") is None
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype(torch.device("cpu"), "fp8")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("tpu-ish")


def test_autocast_none_is_a_no_op_and_bf16_runs_on_cpu() -> None:
    x = torch.ones(2, 2)
    with autocast(torch.device("cpu"), None):
        assert (x @ x).dtype == torch.float32
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16


def test_cpu_training_autocasts_to_bf16_only_with_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_amx", lambda: True)
    assert training_autocast_dtype(cpu, amp=True) == torch.bfloat16
    assert training_autocast_dtype(cpu, amp=False) is None
    monkeypatch.setattr(device, "cpu_has_amx", lambda: False)
    assert training_autocast_dtype(cpu, amp=True) is None
    monkeypatch.undo()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: 1 / 0, raising=False)
    assert device.cpu_has_amx() is False  # a probe that fails reads as no AMX


def test_bad_device_and_precision_are_option_errors() -> None:
    from snapper.errors import BadOptionError

    for call in (lambda: device.check_precision("fp8"), lambda: resolve_device("tpu:7")):
        with pytest.raises(BadOptionError):
            call()
