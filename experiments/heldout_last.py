"""Every held-out box, no checkpoint selection: a second, larger look at the coco_real runs.

``experiments/coco_real.py`` keeps each run's best checkpoint by its score on the *selection*
half of the held-out images and reports on the other half (323 boxes). That half has fewer
small objects than the held-out images as a whole (23% against 30%), and single-run differences of two
points are within its noise. This script evaluates each run's *last* checkpoint (step 1500,
the end of the cosine schedule: nothing chose it) on *all* held-out images, selection and
report halves together (604 boxes), optionally also with flip test-time augmentation.

    .venv/bin/python experiments/heldout_last.py                       # after experiments/coco_real.py
    .venv/bin/python experiments/heldout_last.py --runs lite0 lite2 --flip
    .venv/bin/python experiments/heldout_last.py --runs lite0 lite0-seed1 lite0-seed2 --ensemble
    .venv/bin/python experiments/heldout_last.py --runs lite0 lite0-ema --raw

``--ensemble`` adds one row for the listed runs together (their edge distributions averaged,
as flip averages two readings): how much of the gap to a target is run-to-run variance.
``--raw`` adds, for a run that kept a weight average (``ema_decay``), the raw weights of the
same last step (from its ``train_state.pt``): the average against its own trajectory, with no
seed noise between the two rows.

Writes ``experiments/results/heldout-last/report.md`` (Table 1 overall and by size) and the
per-box Parquet next to it. Nothing is trained.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from coco_real import ONE_PASS, RUNS, make_shards  # noqa: E402

from snapper.config import EvalConfig, ModelConfig, SnapSettings  # noqa: E402
from snapper.crop import CropGeometry  # noqa: E402
from snapper.evaluation.evaluate import evaluate_checkpoint, evaluate_identity, evaluate_model  # noqa: E402
from snapper.evaluation.metrics import DEV_EDGE_COLS  # noqa: E402
from snapper.geometry import xywh_to_xyxy  # noqa: E402
from snapper.models.checkpoint import load_checkpoint, read_config  # noqa: E402
from snapper.models.net import build_model  # noqa: E402
from snapper.training.state import load_state  # noqa: E402

# The runs of experiments/results/heldout-last/: coco_real.py's default set and the larger trunks.
DEFAULT_RUNS = ("resnet18", "regression", "lite0", "lite0-zoom", "lite1", "lite2", "lite2-zoom")


class Ensemble(torch.nn.Module):
    """Edge models read as one: the logits of their mean edge distribution (decoded by the first)."""

    def __init__(self, models: list[torch.nn.Module]):
        super().__init__()
        self.models = torch.nn.ModuleList(models)
        self.cfg, self.head = models[0].cfg, "edges"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([m(images).float().log_softmax(-1) for m in self.models])
        return torch.logsumexp(logp, 0) - math.log(len(self.models))

    def decode(self, out: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.models[0].decode(out, scale)


def error_scales(df: pd.DataFrame, crops: dict[str, ModelConfig]) -> str:
    """Median edge error per size bucket in original px and in the model's (first-pass) input
    px: whether a model is limited by the pixels it is shown (the same error in input px at
    every scale and crop size) or by what it has learnt."""
    lines = ["| method | size | median edge error, original px | median edge error, input px |", "|---|---|---|---|"]
    for method, cfg in crops.items():
        rows = df[df["method"] == method]
        rough = xywh_to_xyxy(rows[["rough_x", "rough_y", "rough_w", "rough_h"]].to_numpy(float))
        scale = CropGeometry.around(rough, cfg.input_size, cfg.context).edge_scale
        dev = rows[DEV_EDGE_COLS].to_numpy(float)
        for size in ("all", "small", "medium", "large"):
            m = np.ones(len(rows), bool) if size == "all" else (rows["size"] == size).to_numpy()
            if m.any():
                lines.append(f"| {method} | {size} | {np.median(dev[m]):.2f} | {np.median(dev[m] / scale[m]):.2f} |")
    return "\n".join(lines) + "\n"


def raw_weights(run_dir: Path) -> torch.nn.Module | None:
    """The raw weights of a finished run that kept a weight average, None for other runs."""
    state = load_state(run_dir)
    if state is None or not state.ema:
        return None
    model = build_model(read_config(run_dir / "last")[0])
    model.load_state_dict(state.model)
    return model
from snapper.evaluation.metrics import format_table, summarize  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), choices=list(RUNS))
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "coco-real"))
    p.add_argument("--flip", action="store_true", help="also evaluate every edge model with flip")
    p.add_argument("--ensemble", action="store_true", help="also evaluate the runs as one averaged ensemble")
    p.add_argument("--raw", action="store_true", help="also the raw weights of runs that kept a weight average")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "heldout-last"))
    args = p.parse_args()
    urls = make_shards(Path(args.data), ROOT / "shards" / "coco-real")
    shards = urls["select"] + urls["report"]
    tables = [evaluate_identity(EvalConfig(shards=shards, snap=SnapSettings(device="cpu")))]
    crops: dict[str, ModelConfig] = {}  # model rows -> their model config (crop geometry)
    for run in args.runs:
        ckpt = Path(args.runs_dir) / run / "last"
        if not ckpt.is_dir():
            raise SystemExit(f"{ckpt}: no last checkpoint; run experiments/coco_real.py --runs {run} first")
        model_cfg = read_config(ckpt)[0]
        label = RUNS[run][0]
        variants = [(p, False) for p in model_cfg.passes]
        if args.flip and model_cfg.head == "edges":
            variants += [(p, True) for p in model_cfg.passes]
        for passes, flip in variants:
            name = label + (ONE_PASS if passes < max(model_cfg.passes) else "") + (" + flip" if flip else "")
            print(f"evaluating {name}", flush=True)
            cfg = EvalConfig(shards=shards, snap=SnapSettings(device="cpu", passes=passes, flip=flip))
            tables.append(evaluate_checkpoint(str(ckpt), cfg, method=name))
            crops[name] = model_cfg
        raw = raw_weights(Path(args.runs_dir) / run) if args.raw else None
        if raw is not None:
            print(f"evaluating {label} (raw weights)", flush=True)
            tables.append(evaluate_model(raw, model_cfg, EvalConfig(shards=shards, snap=SnapSettings(device="cpu")),
                                         method=f"{label} (raw weights)"))
            crops[f"{label} (raw weights)"] = model_cfg
    if args.ensemble:
        loaded = [load_checkpoint(Path(args.runs_dir) / run / "last") for run in args.runs]
        if len({(c.head, c.input_size) for _, c, _ in loaded}) != 1 or loaded[0][1].head != "edges":
            raise SystemExit("--ensemble needs edge models of one input size: "
                             + ", ".join(f"{r}: {c.head} {c.input_size}px" for r, (_, c, _) in zip(args.runs, loaded)))
        name = "ensemble of " + " + ".join(args.runs)
        print(f"evaluating {name}", flush=True)
        tables.append(evaluate_model(Ensemble([m for m, _, _ in loaded]), loaded[0][1],
                                     EvalConfig(shards=shards, snap=SnapSettings(device="cpu")), method=name))
        crops[name] = loaded[0][1]
    df = pd.concat(tables, ignore_index=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "boxes.parquet")
    md = ("All held-out images of experiments/coco_real.py (selection and report halves, "
          f"{int((df['method'] == 'identity').sum())} boxes), each run's last checkpoint (step 1500, "
          "not selected on anything).\n\n" + format_table(summarize(df))
          + "\n## Median edge error by size (input px: of the first-pass crop)\n\n" + error_scales(df, crops))
    (out / "report.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
