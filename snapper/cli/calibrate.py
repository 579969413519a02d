"""``snapper calibrate --model REF --shards SELECT... --out NEW_DIR [--report-shards REPORT...]``:
make a model's per-edge confidence mean what it says ("0.8": ~80% of such edges within
``model.confidence_px``), written as a new checkpoint folder with the same weights
(:func:`snapper.evaluation.calibrate.calibrate_checkpoint`); prints the expected calibration
error before and after."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from snapper.cli.common import add_model_option, add_set_option, non_negative_int, positive_int, run, setup_logging
from snapper.cli.settings import add_snap_options, apply_options, given, snap_options
from snapper.config import EvalConfig
from snapper.data.manifest import shard_urls
from snapper.evaluation.calibrate import (
    REPORT,
    SELECTION,
    CalibrationResult,
    calibrate_checkpoint,
)
from snapper.evaluation.calibration import BINS
from snapper.evaluation.metrics import ALL, SIZE_BUCKETS
from snapper.models.reference import DEFAULT_MODEL

PROG = "snapper calibrate"
FIELD_OPTIONS = {"max_boxes": "max_boxes", "workers": "workers", "seed": "seed"}


def build_parser() -> argparse.ArgumentParser:
    d = EvalConfig()
    p = argparse.ArgumentParser(prog=PROG, description="Calibrate a model's per-edge confidence on held-out shards "
                                                       "and write it as a new checkpoint folder (same weights).")
    add_model_option(p, default=DEFAULT_MODEL, help=f"checkpoint folder or MLflow model ref (default {DEFAULT_MODEL})")
    p.add_argument("--shards", nargs="+", required=True,
                   help="the selection split the calibration is fitted on: shard URLs/globs, or a shard folder "
                        "(its --split manifest)")
    p.add_argument("--report-shards", nargs="+", default=[],
                   help="a held-out report split to measure the calibration on (nothing is fitted on it)")
    p.add_argument("--split", default="val", help="manifest split of a --shards folder (default: val)")
    p.add_argument("--report-split", default="val", help="manifest split of a --report-shards folder (default: val)")
    p.add_argument("--out", required=True, help="the new checkpoint folder (with calibration.json, reliability.png)")
    p.add_argument("--bins", type=positive_int, default=BINS, help=f"reliability bins (default {BINS})")
    p.add_argument("--max-boxes", type=positive_int, help="score at most this many boxes per split")
    p.add_argument("--workers", type=non_negative_int, help=f"stream loader processes (default {d.workers})")
    p.add_argument("--seed", type=int, help=f"jitter seed (per annotation id) (default {d.seed})")
    p.add_argument("--no-plots", action="store_true", help="skip reliability.png")
    add_snap_options(p, d.snap)
    add_set_option(p, "EvalConfig")
    return p


def _urls(items: list[str], split: str) -> list[str]:
    urls: list[str] = []
    for s in items:
        urls.extend(shard_urls(s, split) if Path(s).is_dir() else [s])
    return urls


def describe(res: CalibrationResult) -> list[str]:
    """The lines printed: where it went, then ECE before -> after per split (and size bucket)."""
    lines = [f"calibrated {res.source} -> {res.checkpoint} on {res.n_edges} selection edges "
             f"(hit: within {res.confidence_px:g} px; {len(res.calibration[0])} knots)"]
    for split, note in ((SELECTION, " (in-sample)"), (REPORT, "")):
        sizes = (ALL, *SIZE_BUCKETS) if split == REPORT else (ALL,)
        for size in sizes:
            before, after = res.ece_of(split, "before", size), res.ece_of(split, "after", size)
            if not math.isnan(before):  # NaN: no such split or bucket
                label = f"ECE {split}{note}" if size == ALL else f"  {size} boxes"
                lines.append(f"{label}: {before:.4f} -> {after:.4f}")
    lines.append("files: " + ", ".join(res.files.values()))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    cfg = apply_options(p, EvalConfig(), args.overrides, {**given(args, FIELD_OPTIONS), **snap_options(args)})
    setup_logging()

    def body() -> int:
        res = calibrate_checkpoint(args.model, _urls(args.shards, args.split), args.out,
                                   _urls(args.report_shards, args.report_split), cfg, bins=args.bins,
                                   plots=not args.no_plots)
        print("\n".join(describe(res)))
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
