"""End-to-end training throughput vs the model's own ceiling.

    .venv/bin/python bench/bench_train.py                       # cpu preset, synthetic shards
    .venv/bin/python bench/bench_train.py --data ../shared/data/coco128-train --steps 30
    .venv/bin/python bench/bench_train.py --threads 1   # shared box: 2-thread OpenMP collapses
                                                        # when any other process holds a core

Three numbers at the same batch size and input size:

* **stream**: samples/s of the training stream alone (decode + jitter + crop + augment, in
  ``data.workers`` loader processes), no model;
* **train**: samples/s of :func:`snapper.training.loop.train` (stream + forward/backward/step), read
  from its own log (``history.jsonl``), first window (start-up) excluded;
* **model**: forward+backward+step on a fixed synthetic batch (``bench_model.measure``).

``train / model`` is the share of the model's ceiling the loop achieves; the target on CPU is
>= 0.8 (the loader must keep up). On a CPU-only box the loader workers and the model share
the same cores, so this ratio is the honest measure of the input pipeline's cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402
from bench_model import measure  # noqa: E402

from snapper.data.manifest import shard_urls  # noqa: E402
from snapper.data.shards import shard_dataset  # noqa: E402
from snapper.data.synthetic import generate  # noqa: E402
from snapper.data.train_stream import train_loader  # noqa: E402
from snapper.device import use_channels_last  # noqa: E402
from snapper.overrides import apply_overrides  # noqa: E402
from snapper.training.log import HISTORY_FILE, read_history  # noqa: E402
from snapper.training.loop import train  # noqa: E402
from snapper.training.presets import preset_config  # noqa: E402


def make_shards(data: str | None, work: Path, n_images: int) -> list[str]:
    if data:
        ann, images = Path(data) / "annotations.json", Path(data) / "images"
    else:
        ann = generate(work / "synth", num_images=n_images, seed=0)
        images = ann.parent / "images"
    shard_dataset(ann, images, work / "shards", split="train", shard_size=16)
    return shard_urls(work / "shards", "train")


def stream_rate(cfg, batches: int) -> float:
    loader = train_loader(cfg)
    it = iter(loader)
    next(it)  # start-up (worker processes, first decode) excluded
    n, t0 = 0, time.perf_counter()
    while n < batches:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += 1
        _ = b["image"].shape
    return n * cfg.batch_size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--data", help="COCO folder (annotations.json + images/); default: generated synthetic scenes")
    p.add_argument("--images", type=int, default=96, help="synthetic images to generate")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--log-every", type=int, default=4)
    p.add_argument("--batch", type=int, help="override the preset's batch size")
    p.add_argument("--size", type=int, help="override the preset's input size")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch threads of the training process (on a shared box: the idle cores)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="snapper-bench-") as tmp:
        work = Path(tmp)
        urls = make_shards(args.data, work, args.images)
        over: dict = {"data": {"train_shards": urls, "val_shards": [], "workers": args.workers},
                      "out_dir": str(work / "run"), "steps": args.steps, "log_every": args.log_every,
                      "ckpt_every": 10**9, "eval_every": 10**9, "tracking": {"enabled": False, "registered_model": None},
                      "device": args.device, "warmup_steps": 1}
        if args.batch:
            over["batch_size"] = args.batch
        if args.size:
            over["model"] = {"input_size": args.size}
        cfg = preset_config(args.preset, over)
        if args.overrides:
            cfg = apply_overrides(cfg, args.overrides)
        print(f"preset {args.preset}: {cfg.model.trunk} {cfg.model.input_size}px fpn/dec "
              f"{cfg.model.fpn_channels}/{cfg.model.decoder_channels}, batch {cfg.batch_size}, workers "
              f"{cfg.data.workers}, device {args.device}, threads {torch.get_num_threads()}, "
              f"data {args.data or f'synthetic x{args.images}'}", flush=True)

        s_rate = stream_rate(cfg, batches=max(4, args.steps // 2))
        print(f"stream only: {s_rate:.1f} samples/s", flush=True)

        # Model-only before and after the training run (A-B-A): on a shared machine the load
        # drifts, and the mean of the two brackets the run better than either alone.
        dev = torch.device(args.device)
        # the limit runs with the training loop's own precision and memory format
        policy = dict(amp=cfg.amp, channels_last=cfg.channels_last and use_channels_last(dev))
        m_before = measure(cfg.model, cfg.batch_size, dev, train=True, warmup=1, iters=4, seconds=20.0, **policy)
        train(cfg)
        rows = read_history(work / "run" / HISTORY_FILE)
        rates = [r["samples_per_s"] for r in rows[1:]] or [rows[-1]["samples_per_s"]]
        t_rate = sorted(rates)[len(rates) // 2]
        m_after = measure(cfg.model, cfg.batch_size, dev, train=True, warmup=1, iters=4, seconds=20.0, **policy)
        m_rate = (m_before + m_after) / 2
        print(f"train loop : {t_rate:.1f} samples/s (median of {len(rates)} windows of {args.log_every} steps)")
        print(f"model only : {m_rate:.1f} samples/s (fwd+bwd+step on a fixed batch; before {m_before:.1f}, "
              f"after {m_after:.1f})")
        print(f"ratio train/model: {t_rate / m_rate:.2f} (target >= 0.8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
