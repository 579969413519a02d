"""``snapper promote NAME VERSION``: give a registered version the ``@champion`` alias, gated.

    snapper promote snapper 4                     # only if version 4 beats the champion
    snapper promote snapper 4 --shards shards/coco/val-manifest.json
    snapper promote snapper 3 --force --reason "roll back: v4 misses small boxes"

The candidate and the current champion are scored on the same boxes (the held-out shards
recorded with the candidate, or ``--shards``); the alias moves only when the candidate is
better, by the rule used after training. ``--force --reason`` skips the gate. Every move is
recorded on both versions (tags and a line in each description). Exit 0: the candidate is
the champion; 1: the gate refused it; 2: bad input.
"""

from __future__ import annotations

import argparse

from snapper.cli.common import positive_int, run
from snapper.training.promote import promote

PROG = "snapper promote"
EXIT_REFUSED = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Move @champion to a registered version if it beats the "
                                "current champion on the same boxes (or --force --reason).")
    p.add_argument("name", help="registered model name, e.g. snapper")
    p.add_argument("version", type=positive_int, help="the version to promote")
    p.add_argument("--shards", nargs="+", metavar="URL",
                   help="held-out shards to compare on (default: the ones recorded with the candidate)")
    p.add_argument("--device", default="auto", help="where to evaluate (auto|cpu|cuda|cuda:N|mps)")
    p.add_argument("--out-dir", help="where the comparison's per-box table goes (default runs/promote/NAME-vN)")
    p.add_argument("--force", action="store_true", help="skip the gate (needs --reason)")
    p.add_argument("--reason", help="why: recorded on both versions (required with --force)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        res = promote(args.name, args.version, shards=args.shards, force=args.force, reason=args.reason,
                      device=args.device, out_dir=args.out_dir)
        print(res["line"])
        return 0 if res["moved"] or res["check"] is None else EXIT_REFUSED

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
