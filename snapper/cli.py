"""``snapper <command> ...``: each command's parser and body live in the module that owns it
(``cli_main(argv) -> int``); this file only dispatches, so importing the CLI stays cheap."""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("snapper.data.synthetic", "generate the embedded synthetic COCO-format dataset"),
    "shard": ("snapper.data.shards", "write a COCO dataset as WebDataset shards + manifest"),
    "train": ("snapper.train", "train a model (CPU, GPU, or torchrun DDP)"),
    "evaluate": ("snapper.evaluate", "evaluate a checkpoint: per-box Parquet + Table 1 summary"),
    "snap": ("snapper.snap", "snap rough boxes on one image; print JSON, optionally draw"),
    "batch-snap": ("snapper.batch", "snap every box of a rough COCO file with full accounting"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: snapper <command> [options]\n\ncommands:")
        for name, (_, desc) in COMMANDS.items():
            print(f"  {name:<12} {desc}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"snapper: unknown command {name!r}; try 'snapper --help'", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli_main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
