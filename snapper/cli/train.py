"""TEMPORARY during the restructure: delegates to the old ``cli_main`` (to be moved here)."""

from __future__ import annotations

from snapper.train import cli_main


def main(argv: list[str]) -> int:
    return cli_main(argv)
