"""``snapper models [NAME]``: the registered versions with their scores, data and aliases, as
a plain table (newest first per model), so a person picks what to promote or snap with."""

from __future__ import annotations

import argparse

from snapper.cli.common import run
from snapper.mlops.promote import list_versions

PROG = "snapper models"
COLUMNS = ("name", "version", "aliases", "score", "miou", "data", "kind", "check", "registered")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="List registered model versions: scores, data, aliases.")
    p.add_argument("name", nargs="?", help="one registered model (default: all)")
    return p


def table(rows: list[dict[str, object]]) -> str:
    """Rows as aligned plain-text columns."""
    cells = [list(COLUMNS)] + [[str(r[c]) if r[c] != "" else "-" for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        rows = list_versions(args.name)
        print(table(rows) if rows else "no registered models (README 'Model lifecycle')")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
