"""A check that the regression baseline can learn at all: fit one fixed batch of 64 demo crops
and print the mean edge error in train mode and in eval mode (BatchNorm running statistics,
what evaluation sees). At 2e-3 it fits the batch to ~0.03 px in both modes within 150 steps,
so the head and its targets are sound; its failure to generalise at that rate on the stream
is a matter of the rate (``experiments/regression_lr.py``), not a bug.

    .venv/bin/python experiments/regression_overfit.py [--lr 2e-3] [--head regression]

Uses the shards of ``experiments/regression_lr.py`` (made on first use in ``--work``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from experiments.regression_lr import REPO, make_shards
from snapper.data.eval_stream import eval_batches
from snapper.models.net import build_model
from snapper.overrides import apply_overrides
from snapper.training.presets import preset_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", default="regression", choices=["regression", "edges"])
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--work", default=str(REPO / "runs" / "regression-lr"))
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = apply_overrides(preset_config("demo"), [f"model.head={a.head}"])
    urls = make_shards(Path(a.work))
    batch = next(iter(eval_batches(urls["train"], cfg.model, cfg.jitter, batch_size=64)))
    x, t = batch["image"], batch["target"].float()
    net = build_model(cfg.model).train()
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=0.05)
    for step in range(a.steps + 1):
        loss = net.loss(net(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            with torch.no_grad():
                train_err = (net.decode(net(x))[0] - t).abs().mean().item()
                net.eval()
                eval_err = (net.decode(net(x))[0] - t).abs().mean().item()
                net.train()
            print(f"step {step:4d}  loss {loss.item():.3f}  mean |edge error| px: train mode {train_err:.2f}, "
                  f"eval mode {eval_err:.2f}")


if __name__ == "__main__":
    main()
