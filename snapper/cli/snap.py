"""``snapper snap IMAGE --box x,y,w,h ...``: snap rough boxes on one image, print JSON."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from snapper.cli.common import add_model_option, fail, run, warn_synthetic
from snapper.cli.settings import add_snap_options, apply_options, snap_options
from snapper.cli.timing import Phases
from snapper.config import SNAP_MIN_BOX_SIZE, SnapSettings
from snapper.errors import file_error
from snapper.imageio import load_image
from snapper.inference.snap import Snapper, SnapResult
from snapper.models.reference import DEFAULT_MODEL, resolve_model

PROG = "snapper snap"
SNAP_OPTIONS = ("device", "precision", "buffer_ratio", "passes", "flip", "guard")  # read-out options (snapper.cli.settings)


def parse_box(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected x,y,w,h numbers") from None
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected 4 numbers x,y,w,h")
    return vals


def box_problem(box: list[float]) -> str | None:
    """Why a ``--box`` cannot be snapped, before anything is loaded: a non-finite number, or
    w or h under ``SNAP_MIN_BOX_SIZE`` (a thinner box has no edges to find; batch snapping
    keeps such boxes as ``too_small``)."""
    if not all(math.isfinite(v) for v in box):
        return "non_finite: every number must be finite"
    if min(box[2], box[3]) < SNAP_MIN_BOX_SIZE:
        return f"degenerate: w and h must be at least {SNAP_MIN_BOX_SIZE:g} px"
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Snap rough boxes on one image; prints JSON.")
    p.add_argument("image")
    p.add_argument("--box", action="append", type=parse_box, required=True, help="x,y,w,h (repeatable)")
    add_model_option(p, default=DEFAULT_MODEL,
                     help=f"checkpoint folder, or an MLflow model reference (models:/NAME/VERSION|latest, "
                          f"models:/NAME@ALIAS; default {DEFAULT_MODEL})")
    add_snap_options(p, SnapSettings(), SNAP_OPTIONS)
    p.add_argument("--out", help="write a PNG with rough (red) and snapped (green) boxes")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print (stderr) where the time went: imports since the process started, model lookup "
                        "and load, snapping")
    return p


def out_problem(out: str) -> str | None:
    """Why ``--out`` cannot take the overlay PNG, checked before the model is loaded."""
    p = Path(out)
    parent = p.resolve().parent
    if p.is_dir():
        return "is a folder; give a file name such as overlay.png"
    if not parent.exists():
        return f"folder {p.parent} does not exist"
    if not parent.is_dir():
        return f"{p.parent} is a file, not a folder"
    if p.suffix.lower() not in Image.registered_extensions():
        return f"unknown image extension {p.suffix!r}; use .png or .jpg"
    return None


def draw_overlay(image_path: str, result: SnapResult, out: str) -> None:
    img = load_image(image_path)
    im = Image.fromarray(img.tensor.permute(1, 2, 0).numpy())
    d = ImageDraw.Draw(im)
    for r, b in zip(result.rough, result.boxes):
        d.rectangle([r[0], r[1], r[0] + r[2] - 1, r[1] + r[3] - 1], outline=(255, 64, 64), width=1)
        d.rectangle([b[0], b[1], b[0] + b[2] - 1, b[1] + b[3] - 1], outline=(64, 255, 64), width=1)
    try:
        im.save(out)
    except OSError as e:  # a full disk, no permission: --out names the file
        raise file_error(out, e) from e


def main(argv: list[str] | None = None) -> int:
    phases = Phases("imports")  # the process so far: the interpreter, torch, this command's modules
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = apply_options(parser, SnapSettings(), [], snap_options(args, "", SNAP_OPTIONS))  # --device banana: exit 2
    for i, box in enumerate(args.box):
        problem = box_problem(box)
        if problem:
            return fail(PROG, f"--box {i} {','.join(f'{v:g}' for v in box)} is {problem}")
    problem = out_problem(args.out) if args.out else None
    if problem:
        return fail(PROG, f"--out {args.out}: {problem}")

    def body() -> int:
        phases.mark("options")
        checkpoint = resolve_model(args.model)
        warn_synthetic(checkpoint)
        phases.mark("model lookup")
        snapper = Snapper.from_checkpoint(checkpoint, settings)
        phases.mark("model load")
        result = snapper.snap(args.image, args.box)
        phases.mark(f"snapping {len(args.box)} box(es) (image decode included)")
        print(json.dumps({"image": args.image, "boxes": result.to_json()}, indent=2))
        if args.out:
            draw_overlay(args.image, result, args.out)
        phases.mark("output")
        if args.verbose:
            phases.print(PROG)
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
