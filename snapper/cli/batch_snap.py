"""``snapper batch-snap ROUGH IMAGES OUT``: snap every box of a rough COCO file (or of each
``*.json`` in a folder, into ``OUT/<stem>/``) with full accounting; prints one line per file.
Ground Truth manifests, Pascal VOC, YOLO and CVAT inputs (``--format``, detected by default)
are converted, snapped the same way and written back in their format under ``OUT/snapped/``
(:func:`snapper.formats.batch_snap_any`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from snapper.batch import (
    AccountingError,
    BatchInputError,
    BatchResult,
    batch_snap,
    check_config,
    check_folders,
    input_files,
)
from snapper.cli.common import (
    add_buffer_ratio_option,
    add_flip_option,
    add_set_option,
    apply_sets,
    fail,
    non_negative_int,
    positive_int,
    run,
    unit_float,
)
from snapper.config import BatchConfig
from snapper.formats import FORMAT_CHOICES, batch_snap_any, resolve_format
from snapper.models.reference import DEFAULT_MODEL

PROG = "snapper batch-snap"

# Options that set a BatchConfig field directly (the defaults are BatchConfig's).
FIELD_OPTIONS = ("chunk_images", "review_threshold", "batch_size", "workers", "device", "buffer_ratio", "max_pixels",
                 "passes", "flip")


def build_parser() -> argparse.ArgumentParser:
    d = BatchConfig()
    p = argparse.ArgumentParser(
        prog=PROG, description="Snap every box of a rough COCO file (or a folder of them) with full accounting.")
    p.add_argument("rough", help="COCO JSON of rough boxes, or a folder of them (each -> OUT_DIR/<stem>/); or a "
                                 "Ground Truth manifest, a folder of VOC XML or YOLO txt files, a CVAT XML file")
    p.add_argument("images_dir")
    p.add_argument("out_dir")
    p.add_argument("--checkpoint", default=DEFAULT_MODEL,
                   help="checkpoint folder, or an MLflow model reference (models:/NAME/VERSION|latest, "
                        "models:/NAME@ALIAS, or NAME)")
    p.add_argument("--format", choices=FORMAT_CHOICES, default="auto",
                   help="input format (default: detected from the content); non-COCO results are also written "
                        "back in that format under OUT_DIR/snapped/")
    p.add_argument("--label-attribute", metavar="NAME",
                   help="Ground Truth: the label attribute (labeling job name); default: the one key holding boxes")
    p.add_argument("--truth", help="COCO JSON of true boxes with the same annotation ids: report Table 1")
    p.add_argument("--chunk-images", type=positive_int, help=f"images per chunk (default {d.chunk_images})")
    p.add_argument("--review-threshold", type=unit_float,
                   help=f"edge confidence below which a box goes on the review list (default {d.review_threshold})")
    p.add_argument("--batch-size", type=positive_int, help=f"crops per forward pass (default {d.batch_size})")
    p.add_argument("--workers", type=non_negative_int, help=f"decoding processes, 0 = none (default {d.workers})")
    p.add_argument("--device", help=f"auto, cpu, cuda, cuda:N (default {d.device})")
    add_buffer_ratio_option(p, None)
    p.add_argument("--max-pixels", type=positive_int,
                   help=f"decode no image larger than this many pixels (after JPEG draft reduction); larger "
                        f"ones are kept as image_too_large (default {d.max_pixels})")
    p.add_argument("--passes", type=int, choices=(1, 2),
                   help=f"2 adds the zoom-in pass (models trained with model.zoom) (default {d.passes})")
    add_flip_option(p, None)
    add_set_option(p, "BatchConfig")
    return p


def make_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BatchConfig:
    """``--set`` values first, then the named options (which win)."""
    cfg = apply_sets(parser, BatchConfig(), args.overrides)
    for name in FIELD_OPTIONS:
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    return cfg


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
    for row in s.get("truth", {}).get("table1", []):
        if row.get("size") == "all":
            lines.append(f"  {row['method']:<8} mIoU {row['miou']:.1f}  IoU>0.9 {row['iou_gt_0.9']:.1f}  "
                         f"edge<1px {row['edge_lt_1px']:.1f}  edge<3px {row['edge_lt_3px']:.1f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = make_config(parser, args)
    try:
        check_config(cfg)  # --set values too, before any work
    except ValueError as e:
        parser.error(str(e))

    def body() -> int:
        fmt = resolve_format(args.rough, args.format)
        if fmt != "coco":
            try:
                r = batch_snap_any(args.rough, args.images_dir, args.out_dir, args.checkpoint, cfg, fmt=fmt,
                                   label_attribute=args.label_attribute, truth=args.truth)
            except AccountingError as e:
                return fail(PROG, e)
            print("\n".join(describe(Path(args.rough), r.batch)))
            print(f"  {fmt} written back: {Path(args.out_dir) / 'snapped'} ({len(r.written)} file(s))")
            return 0
        if args.label_attribute:
            raise BatchInputError("--label-attribute is for Ground Truth manifests, not COCO")
        folder = Path(args.rough).is_dir()
        files = input_files(args.rough)
        if args.truth and folder:
            raise BatchInputError("--truth needs a single rough file, not a folder")
        check_folders(args.images_dir, args.out_dir)
        for f in files:
            out = Path(args.out_dir) / f.stem if folder else Path(args.out_dir)
            try:
                r = batch_snap(f, args.images_dir, out, args.checkpoint, cfg, truth=args.truth)
            except AccountingError as e:  # a bug or a changed file, but the message says which
                return fail(PROG, e)
            print("\n".join(describe(f, r)))
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
