"""``snapper calibrate --model REF --shards SELECT... --out NEW_DIR [--report-shards REPORT...]``:
make a model's per-edge confidence mean what it says ("0.8": ~80% of such edges within
``model.confidence_px``), written as a new checkpoint folder with the same weights
(:func:`snapper.evaluation.calibrate.calibrate_checkpoint`); prints the expected calibration
error before and after (with its 95% interval over images and the floor a perfectly
calibrated confidence would show on as many edges) and what reviewing the least confident
10% of edges catches."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from snapper.cli.common import (
    add_model_option,
    add_set_option,
    non_negative_int,
    positive_int,
    run,
    setup_logging,
)
from snapper.cli.settings import add_snap_options, apply_options, given, snap_options
from snapper.config import EvalConfig
from snapper.data.manifest import shard_urls
from snapper.evaluation.calibrate import (
    DRAWS,
    N_BOOT,
    PER_SIZE,
    REPORT,
    REVIEW_BAD_PX,
    REVIEW_SHARE,
    SELECTION,
    CalibrationResult,
    calibrate_checkpoint,
)
from snapper.evaluation.calibration import BINS, DEFAULT_METHOD, METHODS, MIN_BUCKET_EDGES
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
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help=f"the map: beta calibration (3 numbers), platt (2) or isotonic (default {DEFAULT_METHOD})")
    p.add_argument("--per-size", action=argparse.BooleanOptionalAction, default=PER_SIZE,
                   help="one map per COCO size bucket of the rough box (small/medium/large, original px), "
                        f"read by each box's rough box; a bucket with under {MIN_BUCKET_EDGES} edges per draw reads "
                        "the map of every box. --no-per-size: one map for all "
                        f"(default: {'--per-size' if PER_SIZE else '--no-per-size'})")
    p.add_argument("--draws", type=positive_int, default=DRAWS,
                   help=f"jitter draws per held-out box, seeds --seed, --seed + 1, ... (default {DRAWS})")
    p.add_argument("--resamples", type=non_negative_int, default=N_BOOT,
                   help=f"bootstrap resamples of each ECE's interval; 0: none (default {N_BOOT})")
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


def _ece_text(res: CalibrationResult, split: str, stage: str, size: str) -> str:
    text = f"{res.ece_of(split, stage, size):.4f}"
    lo, hi = res.ece_of(split, stage, size, "ece_lo"), res.ece_of(split, stage, size, "ece_hi")
    return text if math.isnan(lo) else f"{text} [{lo:.4f}, {hi:.4f}]"


def describe(res: CalibrationResult) -> list[str]:
    """The lines printed: where it went, then ECE before -> after per split (and size bucket),
    the floor, and what reviewing the least confident edges catches."""
    params = ", ".join(f"{k}={v:.3f}" for k, v in res.params.items())
    fitted = f"{res.method}{f' ({params})' if params else ''}"
    draws = f"{res.draws} jitter draw{'s' if res.draws > 1 else ''}"
    lines = [(f"calibrated {res.source} -> {res.checkpoint}: {fitted} fitted on {res.n_edges} selection edges "
             f"({draws}; hit: within {res.confidence_px:g} px; {res.knots} knots)")]
    for bucket in SIZE_BUCKETS if res.per_size else ():
        info = res.size_maps[bucket]
        own = ", ".join(f"{k}={v:.3f}" for k, v in info["params"].items()) if info["own_map"] else ""
        lines.append(f"  {bucket} rough boxes ({info['n_edges']} edges, {info['n_misses']} misses): "
                     + (f"own map ({own})" if info["own_map"] else "too few: the map of every box"))
    for split, note in ((SELECTION, " (in-sample)"), (REPORT, "")):
        sizes = (ALL, *SIZE_BUCKETS) if split == REPORT else (ALL,)
        for size in sizes:
            if math.isnan(res.ece_of(split, "before", size)):  # no such split or bucket
                continue
            label = f"ECE {split}{note}" if size == ALL else f"  {size} boxes"
            floor = res.ece_of(split, "after", size, "ece_floor")
            tail = "" if math.isnan(floor) else f" (perfectly calibrated: {floor:.4f})"
            lines.append(f"{label}: {_ece_text(res, split, 'before', size)} -> "
                         f"{_ece_text(res, split, 'after', size)}{tail}")
    for split in (SELECTION, REPORT):
        before, after = res.caught_of(split, "before"), res.caught_of(split, "after")
        if not math.isnan(before):
            lines.append(f"reviewing the least confident {100 * REVIEW_SHARE:g}% of {split} edges catches "
                         f"{before:.1f}% -> {after:.1f}% of those {REVIEW_BAD_PX:g} px or more off")
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
                                   plots=not args.no_plots, method=args.method, draws=args.draws,
                                   n_boot=args.resamples, per_size=args.per_size)
        print("\n".join(describe(res)))
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
