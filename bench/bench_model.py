"""Model throughput: forward and forward+backward images/s per trunk and input size.

    .venv/bin/python bench/bench_model.py                      # resnet18/50, efficientnet_lite0/1/2 x 96/128/256, batch 8
    .venv/bin/python bench/bench_model.py --trunks resnet18 --sizes 128 --device cuda --amp
    .venv/bin/python bench/bench_model.py --trunks resnet18 --sizes 96 --fpn-channels 32 --decoder-channels 32 \
        --decoder-layers 2 --batch 32 --threads 1 [--amp]   # the demo model, one of two side-by-side trainings
    .venv/bin/python bench/bench_model.py --trunks efficientnet_lite0 --sizes 128 --fpn-channels 64 \
        --decoder-channels 64 --decoder-layers 2 --batch 32 --channels-last off   # NCHW, to compare with the default NHWC

The model is the published default (ModelConfig defaults: FPN/decoder 128 channels, 3
decoder layers) with only the trunk and input size changed. Each cell runs ``--warmup``
untimed iterations, then timed ones until ``--iters`` or ``--seconds`` per cell is reached, and
reports batch / median step time (robust to a shared CPU).
Fwd+bwd includes the loss and ``optimizer.step`` (AdamW), i.e. one training step on
synthetic data: the ceiling the training loop (bench_train.py) is compared against.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from snapper.config import ModelConfig  # noqa: E402
from snapper.device import training_autocast_dtype, use_channels_last  # noqa: E402
from snapper.models.net import build_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: bool):
    """Training's autocast policy (snapper.device): bf16/fp16 on CUDA, bf16 on a CPU with AMX."""
    dtype = training_autocast_dtype(device, amp)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def measure(model_cfg: ModelConfig, batch: int, device: torch.device, train: bool, warmup: int, iters: int,
            seconds: float, amp: bool = False, channels_last: bool = False) -> float:
    """Images per second for one configuration (train=True: forward + loss + backward + step)."""
    torch.manual_seed(0)
    model = build_model(model_cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    s = model_cfg.input_size
    x = torch.randint(0, 256, (batch, 3, s, s), dtype=torch.uint8, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.rand(batch, 4, device=device) * s
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None

    def step() -> None:
        if train:
            model.train()
            with _autocast(device, amp):
                loss = model.loss(model(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            model.eval()
            with torch.inference_mode(), _autocast(device, amp):
                model(x)

    for _ in range(warmup):
        step()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters and (not times or time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    # The median step: robust to other processes stealing the (shared) CPU for a moment.
    return batch / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trunks", nargs="+", default=["resnet18", "resnet50", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    p.add_argument("--sizes", nargs="+", type=int, default=[96, 128, 256])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="time cap per cell (after >= 1 iteration)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--amp", action="store_true", help="training's autocast: bf16/fp16 on CUDA, bf16 on a CPU with AMX "
                   "(elsewhere fp32)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="NHWC memory format: auto = training's policy (snapper.device: CUDA and CPU), on/off to compare")
    p.add_argument("--fpn-channels", type=int, default=ModelConfig.fpn_channels)
    p.add_argument("--decoder-channels", type=int, default=ModelConfig.decoder_channels)
    p.add_argument("--decoder-layers", type=int, default=ModelConfig.decoder_layers)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cl = {"on": True, "off": False}.get(args.channels_last, use_channels_last(device))
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch}, torch {torch.__version__}, "
          f"fpn/decoder {args.fpn_channels}/{args.decoder_channels}x{args.decoder_layers}, autocast "
          f"{training_autocast_dtype(device, args.amp) or 'none (fp32)'}, channels_last {cl}")
    print("| trunk | input | fwd img/s | fwd+bwd+step img/s |\n|---|---|---|---|")
    for bb in args.trunks:
        for s in args.sizes:
            cfg = ModelConfig(trunk=bb, input_size=s, fpn_channels=args.fpn_channels,
                              decoder_channels=args.decoder_channels, decoder_layers=args.decoder_layers)
            fwd = measure(cfg, args.batch, device, False, args.warmup, args.iters, args.seconds, args.amp, cl)
            trn = measure(cfg, args.batch, device, True, args.warmup, args.iters, args.seconds, args.amp, cl)
            print(f"| {bb} | {s} | {fwd:.1f} | {trn:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
