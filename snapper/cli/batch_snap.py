"""``snapper batch-snap ROUGH IMAGES OUT``: snap every box of a rough COCO file (or of each
``*.json`` in a folder, into ``OUT/<stem>/``) with full accounting; prints one line per file.
Ground Truth manifests, Pascal VOC, YOLO and CVAT inputs (``--format``, detected by default)
are converted, snapped the same way and written back in their format under ``OUT/snapped/``
(the job is planned by :func:`snapper.formats.pipeline.plan_batch`, as in the flow)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from snapper.batch import REVIEW_EDGES_CSV, BatchResult
from snapper.cli.common import (
    add_model_option,
    add_set_option,
    fail,
    non_negative_int,
    positive_int,
    run,
    unit_float,
    warn_synthetic,
)
from snapper.cli.settings import add_snap_options, apply_options, given, snap_options
from snapper.config import BatchConfig
from snapper.errors import UserInputError
from snapper.formats.pipeline import FORMAT_CHOICES, SNAPPED_DIR, plan_batch, snap_job
from snapper.models.reference import DEFAULT_MODEL

PROG = "snapper batch-snap"

# Options that set a BatchConfig field directly (the defaults are BatchConfig's); the read-out
# options (--batch-size, --device, --buffer-ratio, --passes, --flip) set BatchConfig.snap.
FIELD_OPTIONS = {n: n for n in ("chunk_images", "review_threshold", "review_budget", "workers", "max_pixels",
                                 "follow_links")}
SNAP_OPTIONS = ("batch_size", "device", "buffer_ratio", "passes", "flip", "guard")


def build_parser() -> argparse.ArgumentParser:
    d = BatchConfig()
    p = argparse.ArgumentParser(
        prog=PROG, description="Snap every box of a rough COCO file (or a folder of them) with full accounting.")
    p.add_argument("rough", help="COCO JSON of rough boxes, or a folder of them (each -> OUT_DIR/<stem>/); or a "
                                 "Ground Truth manifest, a folder of VOC XML or YOLO txt files, a CVAT XML file")
    p.add_argument("images_dir")
    p.add_argument("out_dir")
    add_model_option(p, default=DEFAULT_MODEL,
                     help="checkpoint folder, or an MLflow model reference (models:/NAME/VERSION|latest, "
                          f"models:/NAME@ALIAS, or NAME; default {DEFAULT_MODEL})")
    p.add_argument("--format", choices=FORMAT_CHOICES, default="auto",
                   help="input format (default: detected from the content); non-COCO results are also written "
                        "back in that format under OUT_DIR/snapped/")
    p.add_argument("--label-attribute", metavar="NAME",
                   help="Ground Truth: the label attribute (labeling job name); default: the one key holding boxes")
    p.add_argument("--truth", help="COCO JSON of true boxes with the same annotation ids: report Table 1")
    p.add_argument("--chunk-images", type=positive_int, help=f"images per chunk (default {d.chunk_images})")
    p.add_argument("--review-threshold", type=unit_float,
                   help=f"edge confidence below which a box goes on the review list (default {d.review_threshold})")
    p.add_argument("--review-budget", type=float, metavar="N",
                   help=f"also write {REVIEW_EDGES_CSV}: the N snapped edges least likely right (N >= 1), or that "
                        "share of the snapped edges (N in (0, 1)), least confident first, and print how many wrong "
                        "edges they should hold (a count with a calibrated model: snapper calibrate)")
    p.add_argument("--workers", type=non_negative_int, help=f"decoding processes, 0 = none (default {d.workers})")
    p.add_argument("--follow-links", action="store_true", default=None,
                   help="read images through symbolic links that lead outside IMAGES_DIR (default: their boxes "
                        "are kept with reason outside_images_dir, the files never opened)")
    p.add_argument("--max-pixels", type=positive_int,
                   help=f"decode no image larger than this many pixels (after JPEG draft reduction); larger "
                        f"ones are kept as image_too_large (default {d.max_pixels})")
    add_snap_options(p, d.snap, SNAP_OPTIONS)
    add_set_option(p, "BatchConfig")
    return p


def make_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BatchConfig:
    """``--set`` values first, then the named options (which win), all checked before any work."""
    return apply_options(parser, BatchConfig(), args.overrides,
                         {**given(args, FIELD_OPTIONS), **snap_options(args, names=SNAP_OPTIONS)})


def _speed(s: dict[str, Any]) -> str:
    reused = s.get("n_chunks_reused") or 0
    if reused and reused == s.get("n_chunks"):
        return f"all {reused} chunk(s) reused from an earlier run"
    speed = f"{s.get('annotations_per_s')} annotations/s"
    return f"{speed} ({reused} of {s.get('n_chunks')} chunks reused)" if reused else speed


def describe(f: Path, r: BatchResult) -> list[str]:
    """What is printed for one snapped file: counts, and Table 1 when truth was given."""
    s: dict[str, Any] = r.summary
    lines = [f"{f}: {s['n_annotations']} annotations -> {r.annotations}; "
             f"snapped {s['status']['snapped']}, kept {s['status']['kept']} {s['reasons']}, "
             f"needs review {s['needs_review']}, {_speed(s)}"]
    budget = s.get("review_budget")
    if budget:
        note = "" if s.get("calibrated", True) else " (uncalibrated confidence: snapper calibrate makes this a count)"
        lines.append(f"  review {budget['n_edges']} edges: expected to catch ~{budget['expected_wrong']:.1f} wrong "
                     f"edges{note} -> {r.out_dir / budget['file']}")
    for row in s.get("truth", {}).get("table1", []):
        if row.get("size") == "all":
            lines.append(f"  {row['method']:<8} mIoU {row['miou']:.1f}  IoU>0.9 {row['iou_gt_0.9']:.1f}  "
                         f"edge<1px {row['edge_lt_1px']:.1f}  edge<3px {row['edge_lt_3px']:.1f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = make_config(parser, args)  # --set values too, before any work

    def body() -> int:
        plan = plan_batch(args.rough, args.images_dir, args.out_dir, args.model, cfg, args.format,
                          args.label_attribute, args.truth)
        warn_synthetic(plan.checkpoint)
        failed = [f"{u['file']}: {u['error']}" for u in plan.report.get("unreadable", [])]
        for job in plan.jobs:
            try:
                r = snap_job(plan, job, cfg)
            except UserInputError as e:  # one bad file of a folder: said, and the others still snapped
                if len(plan.jobs) == 1:
                    raise
                failed.append(str(e))
                continue
            print("\n".join(describe(Path(job.label), r.batch)))
            if plan.format != "coco":
                print(f"  {plan.format} written back: {Path(job.out_dir) / SNAPPED_DIR} ({len(r.written)} file(s))")
        for line in failed:
            fail(PROG, line)
        if failed:
            return fail(PROG, f"{len(failed)} input file(s) not snapped (above); the others are in {args.out_dir}")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
