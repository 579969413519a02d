"""``snapper evaluate --shards ... --model NAME=REF ...``: Table 1 on held-out shards."""

from __future__ import annotations

import argparse
from pathlib import Path

from snapper.cli.common import add_model_option, add_set_option, non_negative_int, positive_int, run, setup_logging
from snapper.cli.settings import add_snap_options, apply_options, given, snap_options
from snapper.config import EvalConfig
from snapper.data.manifest import shard_urls
from snapper.errors import BadOptionError
from snapper.evaluation.evaluate import IDENTITY, evaluate
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
    add_model_option(p, action="append", default=[], metavar="NAME=PATH_OR_MODELREF",
                     help="checkpoint folder or MLflow model ref (models:/snapper@champion, models:/snapper/3); "
                          "repeatable")
    p.add_argument("--out-dir", default="eval")
    p.add_argument("--max-boxes", type=positive_int)
    d = EvalConfig()
    p.add_argument("--workers", type=non_negative_int, help=f"stream loader processes (default {d.workers})")
    p.add_argument("--seed", type=int, help=f"jitter seed (per annotation id) (default {d.seed})")
    p.add_argument("--jitter-shift", type=float, help=f"the jitter's centre shift (default {d.jitter.shift})")
    add_snap_options(p, d.snap)  # --batch-size is also the stream's batch
    add_set_option(p, "EvalConfig")
    p.add_argument("--no-identity", action="store_true", help="leave out the rough-box floor")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--mlflow", action="store_true", help="log the metrics and files to a new MLflow run")
    return p


# Options that set an EvalConfig field (option dest -> key); the read-out options set EvalConfig.snap.
FIELD_OPTIONS = {"max_boxes": "max_boxes", "workers": "workers", "seed": "seed", "jitter_shift": "jitter.shift"}


def config_from_args(p: argparse.ArgumentParser, args: argparse.Namespace, shards: list[str]) -> EvalConfig:
    """``--set`` values first, then the named options (which win), all checked before any work."""
    return apply_options(p, EvalConfig(shards=shards), args.overrides,
                         {**given(args, FIELD_OPTIONS), **snap_options(args)})


def resolve_checkpoints(items: list[str]) -> dict[str, str]:
    checkpoints: dict[str, str] = {}
    for item in items:
        name, ref = parse_checkpoint(item)
        if name == IDENTITY:
            raise BadOptionError(f"--model {item}: {IDENTITY!r} is the rough-box floor's name; pick another")
        path = resolve_model(ref)
        if name is None:
            head = read_config(path)[0].head
            name = "snapper" if head == "edges" else head
        if name in checkpoints:
            raise BadOptionError(f"--model: method name {name!r} given twice; use NAME=PATH")
        checkpoints[name] = str(path)
    return checkpoints


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.no_identity and not args.model:
        p.error("--no-identity leaves nothing to evaluate: give at least one --model")
    cfg = config_from_args(p, args, [])
    setup_logging()

    def body() -> int:
        shards: list[str] = []
        for s in args.shards:
            shards.extend(shard_urls(s, args.split) if Path(s).is_dir() else [s])
        checkpoints = resolve_checkpoints(args.model)
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
