"""``snapper evaluate --shards ... --checkpoint NAME=REF ...``: Table 1 on held-out shards."""

from __future__ import annotations

import argparse
from pathlib import Path

from snapper.cli.common import (
    add_buffer_ratio_option,
    add_flip_option,
    add_set_option,
    apply_sets,
    positive_int,
    run,
    setup_logging,
)
from snapper.config import PRECISION_CHOICES, EvalConfig, JitterConfig
from snapper.data.manifest import shard_urls
from snapper.evaluation.evaluate import evaluate
from snapper.mlops import tracking
from snapper.models.checkpoint import read_config
from snapper.models.reference import resolve_model

PROG = "snapper evaluate"


def parse_checkpoint(text: str) -> tuple[str | None, str]:
    """``NAME=PATH_OR_REF`` or a bare path/ref (name from the model's head)."""
    name, sep, ref = text.partition("=")
    if sep and name and "/" not in name and not Path(text).exists():
        return name, ref
    return None, text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG,
                                description="Evaluate checkpoints on held-out shards; prints the Table 1 markdown.")
    p.add_argument("--shards", nargs="+", required=True,
                   help="shard URLs/globs, or a shard folder (its --split manifest is used)")
    p.add_argument("--split", default="val", help="manifest split when --shards is a folder (default: val)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH_OR_MODELREF",
                   help="checkpoint folder or MLflow model ref (models:/snapper@champion, models:/snapper/3); repeatable")
    p.add_argument("--out-dir", default="eval")
    p.add_argument("--max-boxes", type=positive_int)
    add_buffer_ratio_option(p, EvalConfig.buffer_ratio)
    p.add_argument("--batch-size", type=positive_int, default=EvalConfig.batch_size)
    p.add_argument("--workers", type=int, default=EvalConfig.workers)
    p.add_argument("--seed", type=int, default=EvalConfig.seed, help="jitter seed (per annotation id)")
    p.add_argument("--jitter-shift", type=float, default=JitterConfig.shift)
    p.add_argument("--device", default=EvalConfig.device)
    p.add_argument("--precision", default=EvalConfig.precision, choices=PRECISION_CHOICES,
                   help="inference precision (auto: bf16/fp16 autocast on CUDA, fp32 on CPU)")
    p.add_argument("--passes", type=int, choices=(1, 2), default=EvalConfig.passes,
                   help="2 adds the zoom-in pass (models trained with model.zoom)")
    add_flip_option(p)
    add_set_option(p, "EvalConfig")
    p.add_argument("--no-identity", action="store_true", help="leave out the rough-box floor")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--mlflow", action="store_true", help="log the metrics and files to a new MLflow run")
    return p


def config_from_args(p: argparse.ArgumentParser, args: argparse.Namespace, shards: list[str]) -> EvalConfig:
    cfg = EvalConfig(shards=shards, jitter=JitterConfig(shift=args.jitter_shift), batch_size=args.batch_size,
                     buffer_ratio=args.buffer_ratio, seed=args.seed, max_boxes=args.max_boxes,
                     workers=args.workers, device=args.device, precision=args.precision, passes=args.passes,
                     flip=args.flip)
    return apply_sets(p, cfg, args.overrides)


def resolve_checkpoints(items: list[str]) -> dict[str, str]:
    checkpoints: dict[str, str] = {}
    for item in items:
        name, ref = parse_checkpoint(item)
        path = resolve_model(ref)
        if name is None:
            head = read_config(path)[0].head
            name = "snapper" if head == "edges" else head
        if name in checkpoints:
            raise ValueError(f"method name {name!r} given twice; use NAME=PATH")
        checkpoints[name] = str(path)
    return checkpoints


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    cfg = config_from_args(p, args, [])
    setup_logging()

    def body() -> int:
        shards: list[str] = []
        for s in args.shards:
            shards.extend(shard_urls(s, args.split) if Path(s).is_dir() else [s])
        checkpoints = resolve_checkpoints(args.checkpoint)
        cfg.shards = shards
        result = evaluate(checkpoints, cfg, args.out_dir, include_identity=not args.no_identity,
                          plots=not args.no_plots)
        if args.mlflow:
            with tracking.start_run("snapper-eval", run_name=f"evaluate {', '.join(checkpoints)}"):
                tracking.log_evaluation(result.metrics, [*result.files.values(), *result.plots.values()])
        print(result.table_md)
        print(f"per-box table: {result.parquet}")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
