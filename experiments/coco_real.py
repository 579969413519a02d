"""Real-photo CPU experiment with an honest hold-out (successor of ``coco_cpu.sh``).

The three COCO folders of ``../shared/data`` are split by image: 80% train (seed 0, the same
images ``coco_cpu.sh`` trained on), and the 20% held out is split again by image (seed 1)
into a *selection* part, on which each run keeps its best checkpoint, and a *report* part,
which nothing has seen and on which every row below is measured. Rows: the rough boxes
(identity), the detection-style regression baseline, the edge model with a random-init
ResNet-18 (the earlier ``cpu`` preset) and with the ImageNet-pretrained EfficientNet-Lite0
(today's ``cpu`` preset), and the pretrained Lite0 with the zoom-in pass (``model.zoom``; its
report rows with and without the second pass), all with the same crops and step budget.

    .venv/bin/python experiments/coco_real.py                    # 1500 steps per run (~30 min each, 2 cores)
    .venv/bin/python experiments/coco_real.py --steps 400 --runs lite0 resnet18

Resumable: finished shards are reused, trainings resume from their last checkpoint, and a
finished run is not retrained. Writes ``experiments/results/coco-real/`` (Table 1 overall and
by size, ms per box) and prints the report table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from snapper.config import EvalConfig, SnapSettings
from snapper.crop import CropGeometry, to_uint8
from snapper.data.coco import load_coco
from snapper.data.manifest import shard_urls
from snapper.data.shards import shard_index, split_by_image
from snapper.evaluation.evaluate import evaluate
from snapper.evaluation.metrics import format_table
from snapper.inference.snap import Snapper
from snapper.models.checkpoint import load_checkpoint, read_config
from snapper.overrides import apply_overrides
from snapper.training.loop import train
from snapper.training.presets import preset_config, regression_baseline

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("coco128-train", "coco-mini", "tiny-coco")
WEB_DATASETS = ("kangaroo", "raccoon")  # single-class web photos: extra training data for "lite0-web"
RUNS = {  # name -> (method label, overrides on the `cpu` preset)
    "resnet18": ("snapper-resnet18-random", ["model.trunk=resnet18", "model.weights=none", "trunk_lr_mult=1",
                                             "freeze_trunk_bn=false"]),
    "lite0": ("snapper-lite0-imagenet", []),
    # Not in the default set: the lite0 row as its committed results ran (fp32, before CPU
    # training autocast to bf16 on AMX machines), to compare with later fp32 runs such as
    # "lite0-buffer" (experiments/buffer_ratio.py).
    "lite0-fp32": ("snapper-lite0-imagenet", ["amp=false"]),
    "regression": ("regression-lite0-imagenet", None),  # presets.regression_baseline of the lite0 run
    "lite0-zoom": ("snapper-lite0-imagenet-zoom", ["model.zoom=true"]),
    # Not in the default set: the Lite0 run with 80% of the two web sets added to its training
    # data (their 20% held out unused, so the report split is the same), in fp32 like the rows
    # above (they ran before CPU training autocast to bf16): does more, out-of-domain data help?
    "lite0-web": ("snapper-lite0-imagenet-plus-web", ["amp=false"]),
    # Not in the default set: the Lite0 run again with another seed (fp32), to see how far two
    # runs of one recipe land apart on the report split.
    "lite0-seed1": ("snapper-lite0-imagenet-seed1", ["seed=1", "amp=false"]),
    "lite0-seed2": ("snapper-lite0-imagenet-seed2", ["seed=2", "amp=false"]),  # a third, for the spread
    # Not in the default set: the Lite0 run (seed 0, fp32) keeping a moving average of its weights
    # (snapper.training.ema); its train_state.pt also holds the raw weights of the same steps, so
    # experiments/ema_paired.py compares the two on one trajectory, free of seed noise.
    "lite0-ema": ("snapper-lite0-imagenet-ema", ["ema_decay=0.995", "amp=false"]),
    # Not in the default set: Lite0 on 192 px crops instead of 128 (2.25x the pixels per step,
    # same 1500 steps, fp32): is the input resolution what limits the pixel columns?
    "lite0-192": ("snapper-lite0-imagenet-192px", ["model.input_size=192", "amp=false"]),
    # Not in the default set: Lite0 trained on crops cut with a buffer ratio drawn from
    # U(1.0, 1.5) per box (fp32), so that snapping with --buffer-ratio > 1 keeps working;
    # experiments/buffer_ratio.py compares it with "lite0-fp32" at several buffer ratios.
    "lite0-buffer": ("snapper-lite0-imagenet-buffer", ["data.buffer_ratio_min=1.0", "data.buffer_ratio_max=1.5",
                                                       "amp=false"]),
    # Not in the default set: the trunk learning at 0.3x and 1x the new layers' rate instead of
    # the preset's 0.1x (fp32, like "lite0-fp32"): does adapting ImageNet features more to
    # edges help, or does it overfit ~300 images faster?
    "lite0-tlr0.3": ("snapper-lite0-imagenet-trunk-lr0.3", ["trunk_lr_mult=0.3", "amp=false"]),
    "lite0-tlr1": ("snapper-lite0-imagenet-trunk-lr1", ["trunk_lr_mult=1", "amp=false"]),
    # Not in the default set: rough boxes drawn wider than the paper's (shift +/-15%, scale in
    # [0.75, 1.25]) with a crop wide enough to hold the truth (context 1.8; fp32), for rough
    # boxes that are off by more than the paper's jitter (experiments/buffer_ratio.py).
    "lite0-wide": ("snapper-lite0-imagenet-wide-jitter", ["jitter.shift=0.15", "jitter.scale_min=0.75",
                                                           "jitter.scale_max=1.25", "model.context=1.8",
                                                           "amp=false"]),
    # Not in the default set: the larger pretrained Lite trunks, same head, crops and steps
    # (at 128 px they train about as fast as Lite0 here, bench/bench_model.py); they ran in
    # bf16 autocast on this AMX CPU. "lite2-zoom" also gives its pass-1-only row.
    "lite1": ("snapper-lite1-imagenet", ["model.trunk=efficientnet_lite1", "amp=true"]),
    "lite2": ("snapper-lite2-imagenet", ["model.trunk=efficientnet_lite2", "amp=true"]),
    "lite2-zoom": ("snapper-lite2-imagenet-zoom", ["model.trunk=efficientnet_lite2", "model.zoom=true",
                                                    "amp=true"]),
}
DEFAULT_RUNS = ("resnet18", "lite0", "regression", "lite0-zoom")
ONE_PASS = " (pass 1 only)"  # suffix of a zoom model's row evaluated without its second pass


def make_shards(data: Path, out: Path) -> dict[str, list[str]]:
    urls: dict[str, list[str]] = {"train": [], "select": [], "report": [], "train_web": []}
    for ds in DATASETS:
        index = load_coco(data / ds / "annotations.json", data / ds / "images")
        train_ids, held = split_by_image(index, 0.2, seed=0)
        select_ids, report_ids = split_by_image(index.subset(held), 0.5, seed=1)
        for split, ids in (("train", train_ids), ("select", select_ids), ("report", report_ids)):
            shard_index(index, out / ds, split, shard_size=16, image_ids=ids)
            urls[split] += shard_urls(out / ds, split)
    for ds in WEB_DATASETS:
        index = load_coco(data / ds / "annotations.json", data / ds / "images")
        train_ids, _ = split_by_image(index, 0.2, seed=0)
        shard_index(index, out / ds, "train", shard_size=16, image_ids=train_ids)
        urls["train_web"] += shard_urls(out / ds, "train")
    return urls


def run(name: str, steps: int, urls: dict[str, list[str]], runs_dir: Path) -> str:
    label, sets = RUNS[name]
    base = preset_config("cpu")
    cfg = apply_overrides(regression_baseline(base) if sets is None else base, [*(sets or []), f"steps={steps}", "data.val_max_boxes=null",
                                                 "tracking.experiment=snapper-coco-real", "tracking.registered_model=null",
                                                 f"tracking.run_name={label}", f"out_dir={runs_dir / name}"])
    cfg.data.train_shards, cfg.data.val_shards = urls["train"], urls["select"]
    if name == "lite0-web":
        cfg.data.train_shards = urls["train"] + urls["train_web"]
    result = train(cfg)
    return result.best_checkpoint or result.last_checkpoint


def repo_relative(path: str) -> str:
    """A checkpoint path as recorded in runs.json: relative to the repository when inside it,
    so committed results name no machine's folders."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def ms_per_box(checkpoint: str, passes: int = 1, n: int = 256) -> float:
    """Snapping time per box on this CPU (batched crops, model and crop cutting), median of 3,
    for boxes of 20-200 px on a 640x480 image (the second pass looks again at the larger ones)."""
    model, cfg, _ = load_checkpoint(checkpoint)
    snapper = Snapper(model, cfg, device="cpu", batch_size=64)
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 255, (3, 480, 640), dtype=np.uint8))
    xy = rng.uniform(0, 400, (n, 2))
    geo = CropGeometry.around(np.concatenate([xy, xy + rng.uniform(20, 200, (n, 2))], 1), cfg.input_size, cfg.context)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        pos, conf = snapper.predict_crops(to_uint8(geo.cut(image)), geo)
        if passes == 2:
            snapper.second_pass(geo.to_original(pos, 640, 480), conf, geo, [(image, (1.0, 1.0))], np.zeros(n, int),
                                640, 480)
        times.append((time.perf_counter() - t) / n * 1000)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), choices=list(RUNS))
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "coco-real"))
    args = p.parse_args()
    data = Path(args.data)
    if not (data / "coco128-train" / "annotations.json").is_file():
        raise SystemExit(f"{data}: the shared COCO folders are not there; nothing to do")
    urls = make_shards(data, REPO / "shards" / "coco-real")
    checkpoints = {RUNS[r][0]: run(r, args.steps, urls, REPO / "runs" / "coco-real") for r in args.runs}
    passes = {m: max(read_config(c)[0].passes) for m, c in checkpoints.items()}
    for m in [m for m, p in passes.items() if p == 2]:  # a zoom model: also its first pass alone
        checkpoints[m + ONE_PASS], passes[m + ONE_PASS] = checkpoints[m], 1
    out = Path(args.out)
    res = evaluate(checkpoints, EvalConfig(shards=urls["report"], snap=SnapSettings(device="cpu")), out / "eval", n_examples=16,
                   passes=passes)
    speed = {m: ms_per_box(c, passes[m]) for m, c in checkpoints.items()}
    md = (f"Report split (never used for training or checkpoint selection), {args.steps} steps per run.\n\n"
          + res.table_md + "\n## ms per box (model + crop cutting, this CPU; the zoom rows include the second pass)\n\n"
          + "\n".join(f"- {m}: {v:.2f}" for m, v in speed.items()) + "\n")
    (out / "report.md").write_text(md)
    (out / "runs.json").write_text(json.dumps({"steps": args.steps, "checkpoints": {
                                                   m: repo_relative(c) for m, c in checkpoints.items()},
                                               "ms_per_box": speed, "report_boxes": int(
                                                   (pd.read_parquet(res.parquet)["method"] == "identity").sum())},
                                              indent=2))
    print(md)
    print(format_table(res.summary[res.summary["size"] == "all"]))


if __name__ == "__main__":
    main()
