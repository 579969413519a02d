"""The regression baseline's learning rate on the demo's synthetic data (issue 11: a baseline
that can learn).

At the edge model's rate (2e-3) the detection-style regression head stays at the rough boxes;
it learns at lower rates. Each run is the ``demo`` preset with ``model.head=regression`` and
one learning rate (500 steps, same data, crops and seed), evaluated against the rough boxes on
the held-out images of the same synthetic set the demo uses (300 images, seed 0, 20% held out).

    .venv/bin/python experiments/regression_lr.py                       # 2e-3 5e-4 2.5e-4 1e-4
    .venv/bin/python experiments/regression_lr.py --lrs 5e-4 2.5e-4 --work runs/regression-lr

Resumable (finished runs are only re-evaluated). Writes one Table 1 per rate and ``report.md``
to ``experiments/results/regression-lr/``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from snapper.config import EvalConfig, SnapSettings
from snapper.data.coco import load_coco
from snapper.data.manifest import shard_urls
from snapper.data.shards import shard_dataset, split_by_image
from snapper.data.synthetic import generate
from snapper.evaluation.evaluate import evaluate
from snapper.evaluation.metrics import format_table
from snapper.overrides import apply_overrides
from snapper.training.loop import train
from snapper.training.presets import preset_config

REPO = Path(__file__).resolve().parents[1]


def make_shards(work: Path) -> dict[str, list[str]]:
    ann = work / "data" / "annotations.json"
    if not ann.exists():
        ann = generate(work / "data", num_images=300, seed=0)
    out = work / "shards"
    if not (out / "val-manifest.json").exists():
        index = load_coco(ann, ann.parent / "images")
        train_ids, val_ids = split_by_image(index, 0.2, seed=0)
        shard_dataset(ann, ann.parent / "images", out, split="train", shard_size=32, image_ids=train_ids)
        shard_dataset(ann, ann.parent / "images", out, split="val", shard_size=32, image_ids=val_ids)
    return {"train": shard_urls(out, "train"), "val": shard_urls(out, "val")}


def run(lr: str, work: Path, urls: dict[str, list[str]], results: Path) -> str:
    name = f"lr{lr}"
    cfg = apply_overrides(preset_config("demo"), ["model.head=regression", "tracking.enabled=false", "tracking.registered_model=null",
                                                  f"out_dir={work / 'runs' / name}", f"lr={lr}"])
    cfg.data.train_shards, cfg.data.val_shards = urls["train"], urls["val"]
    r = train(cfg)
    res = evaluate({name: r.best_checkpoint}, EvalConfig(shards=urls["val"], snap=SnapSettings(device="cpu")), results / name,
                   plots=False)
    return format_table(res.summary[res.summary["size"] == "all"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lrs", nargs="+", default=["2e-3", "5e-4", "2.5e-4", "1e-4"])
    p.add_argument("--work", default=str(REPO / "runs" / "regression-lr"), help="data, shards and runs")
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "regression-lr"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work, out = Path(args.work), Path(args.out)
    urls = make_shards(work)
    tables = {lr: run(lr, work, urls, out) for lr in args.lrs}
    md = "Regression baseline, demo preset, 500 steps; held-out synthetic boxes.\n\n" + "\n".join(
        f"## lr = {lr}\n\n{t}" for lr, t in tables.items())
    (out / "report.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
