"""``snapper synth OUT_DIR``: generate (or reuse) the embedded synthetic COCO-format dataset."""

from __future__ import annotations

import argparse
import time

from snapper.cli.common import add_set_option, apply_sets, fail, run
from snapper.data.synthetic import SynthConfig, generate_from_config, summarize

PROG = "snapper synth"


def build_parser() -> argparse.ArgumentParser:
    d = SynthConfig()
    p = argparse.ArgumentParser(prog=PROG, description="Generate the embedded synthetic COCO-format dataset "
                                "(procedurally generated scenes with exact, tight boxes).")
    p.add_argument("out_dir", help="output folder (images/ + annotations.json)")
    p.add_argument("--num-images", type=int, default=d.num_images)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--width", type=int, default=d.width, help="nominal image width")
    p.add_argument("--height", type=int, default=d.height, help="nominal image height")
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="same as --width W --height H")
    p.add_argument("--scale-min", type=float, default=d.scale_min,
                   help="per-image size factor range (1 1 for a fixed size)")
    p.add_argument("--scale-max", type=float, default=d.scale_max)
    add_set_option(p, "SynthConfig")
    return p


def config_from_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> SynthConfig:
    """The options, then the ``--set`` overrides; SynthConfig's own checks raise ValueError."""
    width, height = args.size if args.size else (args.width, args.height)
    cfg = SynthConfig(num_images=args.num_images, seed=args.seed, width=width, height=height,
                      scale_min=args.scale_min, scale_max=args.scale_max)
    return apply_sets(p, cfg, args.overrides)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        cfg = config_from_args(p, args)
    except ValueError as e:  # e.g. "invalid SynthConfig: seed must be >= 0", before any work
        return fail(PROG, e)

    def body() -> int:
        t0 = time.perf_counter()
        ann = generate_from_config(args.out_dir, cfg)
        c = summarize(ann)
        print(f"{ann}: {c['images']} images, {c['boxes']} boxes (small {c['small']}, medium {c['medium']}, "
              f"large {c['large']}) in {time.perf_counter() - t0:.1f}s")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
