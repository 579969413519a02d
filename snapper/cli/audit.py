"""``snapper audit ANN.json IMAGES OUT``: snap every box of a dataset believed correct and rank
the boxes by how likely an annotated edge is misplaced (:func:`snapper.batch.audit.audit_dataset`).

OUT is a batch-snap output folder (``snapped.json``, ``boxes.parquet``, ...) plus
``audit.parquet`` (every annotation, scored or not), ``audit.json``, ``audit_top.html`` (the
contact sheet) and a ``review.csv`` replaced by the flagged suspects (``review push OUT`` sends
exactly those). Bad input (unreadable JSON, a missing images folder, ...) ends in one line, exit 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from snapper.batch.audit import AUDIT_JSON, AUDIT_PARQUET, AUDIT_SHEET, AuditResult, audit_dataset
from snapper.batch.pipeline import check_folders
from snapper.batch.schema import REVIEW_CSV
from snapper.cli.common import add_model_option, add_set_option, non_negative_int, positive_int, run, warn_synthetic
from snapper.cli.settings import add_snap_options, apply_options, given, snap_options
from snapper.config import AUDIT_BOX_SCORES, AUDIT_SCORES, AuditConfig
from snapper.models.reference import DEFAULT_MODEL, resolve_model

PROG = "snapper audit"
FIELD_OPTIONS = {"flag": "flag", "score": "score", "min_px": "min_px", "box_score": "box_score",
                 "sheet_max": "sheet_max"}
BATCH_OPTIONS = {"chunk_images": "batch.chunk_images", "workers": "batch.workers"}
SNAP_OPTIONS = ("batch_size", "device", "buffer_ratio", "guard")


def flag_value(text: str) -> float:
    """``--flag``: a share in (0, 1) or a whole count >= 1 (checked again by AuditConfig)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1) or a whole number >= 1, got {text!r}") from None
    if not (0.0 < v < 1.0 or (v >= 1.0 and v.is_integer())):
        raise argparse.ArgumentTypeError(f"must be a share in (0, 1) or a whole number >= 1, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    d = AuditConfig()
    p = argparse.ArgumentParser(
        prog=PROG, description="Snap every box of an existing dataset and rank the boxes by how likely an edge is "
                               "misplaced; the top suspects go to review.csv and a contact sheet.")
    p.add_argument("annotations", help="COCO instances JSON of the boxes to audit (believed correct)")
    p.add_argument("images_dir")
    p.add_argument("out_dir", help="a batch-snap output folder plus audit.parquet, audit.json, audit_top.html; "
                                   "its review.csv holds the flagged suspects")
    add_model_option(p, default=DEFAULT_MODEL,
                     help=f"checkpoint folder or MLflow model reference (default {DEFAULT_MODEL})")
    p.add_argument("--flag", type=flag_value,
                   help=f"how many top suspects to flag: a share of the scored boxes (0.05) or a count (50) "
                        f"(default {d.flag:g})")
    p.add_argument("--score", choices=AUDIT_SCORES, help=f"per-edge suspicion (default {d.score})")
    p.add_argument("--min-px", type=float, help=f"edges off by less than this many px are not suspect "
                                                f"(default {d.min_px:g})")
    p.add_argument("--box-score", choices=AUDIT_BOX_SCORES,
                   help=f"a box's score: its largest edge suspicion, or the sum of its two largest (default "
                        f"{d.box_score})")
    p.add_argument("--sheet-max", type=non_negative_int,
                   help=f"suspects drawn in {AUDIT_SHEET}, 0 = no sheet (default {d.sheet_max})")
    p.add_argument("--chunk-images", type=positive_int, help=f"images per chunk (default {d.batch.chunk_images})")
    p.add_argument("--workers", type=non_negative_int,
                   help=f"decoding processes, 0 = none (default {d.batch.workers})")
    add_snap_options(p, d.batch.snap, SNAP_OPTIONS)
    p.add_argument("--flip", dest="flip", action="store_true", default=None,
                   help="read each crop also mirrored (test-time augmentation, 2x the model time)"
                        + (" (the default)" if d.batch.snap.flip else ""))
    p.add_argument("--no-flip", dest="flip", action="store_false", help="read each crop once")
    add_set_option(p, "AuditConfig (batch-snap settings under batch.)")
    return p


def make_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> AuditConfig:
    """``--set`` values first, then the named options (which win), all checked before any work."""
    return apply_options(parser, AuditConfig(), args.overrides,
                         {**given(args, FIELD_OPTIONS), **given(args, BATCH_OPTIONS),
                          **snap_options(args, prefix="batch.snap.", names=(*SNAP_OPTIONS, "flip"))})


def describe(r: AuditResult) -> list[str]:
    s: dict[str, Any] = r.summary
    kept = ", ".join(f"{k} {v}" for k, v in s["unscored_reasons"].items()) or "none"
    lines = [f"{s['input']}: {s['n_annotations']} annotations, {s['n_scored']} scored, {s['n_unscored']} not "
             f"scored ({kept})",
             f"  flagged {s['n_flagged']} suspects (score >= {s['score_at_cut']:.4f})" if s["n_flagged"]
             else "  flagged 0 suspects",
             f"  -> {r.out_dir / AUDIT_PARQUET}, {r.out_dir / REVIEW_CSV} (the suspects), {r.out_dir / AUDIT_JSON}"]
    if s["files"].get("sheet"):
        lines.append(f"  contact sheet: {r.out_dir / AUDIT_SHEET}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = make_config(parser, args)

    def body() -> int:
        check_folders(args.images_dir, args.out_dir)  # a misspelled folder is named before the model loads
        checkpoint = resolve_model(args.model)
        warn_synthetic(checkpoint)
        r = audit_dataset(args.annotations, args.images_dir, args.out_dir, checkpoint, cfg)
        print("\n".join(describe(r)))
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
