"""``snapper noise-report ROUGH GOLD [OUT_DIR]``: how the rough boxes of a team's annotators
differ from the gold boxes of the same objects (:mod:`snapper.evaluation.noise`).

Prints per edge how far outward the rough boxes are (in % of the object's size) and the share
inside the paper's jitter; writes ``pairs.parquet``, ``noise.json`` and ``noise.png`` to
OUT_DIR (default ``noise-report/``)."""

from __future__ import annotations

import argparse

from snapper.cli.common import positive_float, run
from snapper.config import ModelConfig
from snapper.evaluation.noise import format_report, noise_report, pair_boxes, write_noise_report

PROG = "snapper noise-report"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Measure the annotators' noise: rough vs gold boxes of the "
                                "same objects (matched by annotation id, else by IoU per image file).")
    p.add_argument("rough", help="COCO file of the rough (crowd) boxes")
    p.add_argument("gold", help="COCO file of the gold (corrected) boxes of the same images")
    p.add_argument("out_dir", nargs="?", default="noise-report", help="where the report goes (default: noise-report)")
    p.add_argument("--context", type=positive_float, default=ModelConfig().context,
                   help="crop extent / rough box of the model to check against (default %(default)g)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        pairs = pair_boxes(args.rough, args.gold)
        files = write_noise_report(pairs, args.out_dir, args.context)
        print(format_report(noise_report(pairs, args.context)))
        print(f"-> {files['report']}, {files['pairs']}, {files['plot']}")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
