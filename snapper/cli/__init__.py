"""``snapper <command> ...``: one module per command under ``snapper/cli/``, each with
``build_parser()`` and ``main(argv) -> int``. The library modules hold no argument parsing,
printing or exit codes; this package is the only place that does."""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("snapper.cli.synth", "generate the embedded synthetic COCO-format dataset"),
    "shard": ("snapper.cli.shard", "write a COCO dataset as WebDataset shards + manifest"),
    "train": ("snapper.cli.train", "train a model (CPU, GPU, or torchrun DDP)"),
    "evaluate": ("snapper.cli.evaluate", "evaluate a checkpoint: per-box Parquet + Table 1 summary"),
    "calibrate": ("snapper.cli.calibrate", "calibrate per-edge confidence on held-out shards into a new checkpoint"),
    "snap": ("snapper.cli.snap", "snap rough boxes on one image; print JSON, optionally draw"),
    "batch-snap": ("snapper.cli.batch_snap", "snap every box of a rough COCO file with full accounting"),
    "serve": ("snapper.cli.serve", "serve the champion model over HTTP (MLflow's model server)"),
    "label-studio": ("snapper.cli.labelstudio", "serve a model as a Label Studio ML backend (snap drawn boxes)"),
    "cvat-tighten": ("snapper.cli.cvat_tighten", "snap a CVAT task's rectangles; dry-run report, --apply patches them back"),
    "noise-report": ("snapper.cli.noise_report", "measure the annotators' noise: rough vs gold boxes, per edge"),
    "audit": ("snapper.cli.audit", "rank a dataset's boxes by how likely an edge is misplaced; suspects to review.csv"),
    "review": ("snapper.cli.review", "send doubtful boxes to Label Studio (push); bring the reviews back as gold (pull)"),
    "adapt": ("snapper.cli.adapt", "fine-tune a model on your gold boxes; champion only if better on held-out gold"),
    "promote": ("snapper.cli.promote", "move @champion to a version only if it beats the champion (or --force --reason)"),
    "models": ("snapper.cli.models", "list registered versions: scores, data, aliases"),
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
    # Imported on demand: `snapper snap` should not pay for MLflow, `snapper synth` not for torch.
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)
