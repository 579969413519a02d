"""What the Buffer Ratio option does, on boxes drawn as in training and on boxes drawn too tight.

The Buffer Ratio scales the rough box about its centre before the crop is cut (SPEC: default
1.0, larger = more context). The model then treats the enlarged box as the rough box, so the
option is for rough boxes that cut the object off: a box drawn at 0.8x the object, snapped
with ratio 1.25, looks to the model like a box of the right size. This script measures that,
for each run's *last* checkpoint on all held-out images of ``coco_real.py`` (604 boxes, as
``heldout_last.py``), under two rough-box protocols:

- ``paper``: the training jitter (shift +/-10%, one scale in [0.9, 1.1]);
- ``tight``: the same with every box 20% smaller (scale in [0.72, 0.88]);
- ``wide``: boxes off by more, in both directions (shift +/-15%, scale in [0.75, 1.25]).

It also scores a run trained with buffer ratios drawn per box from U(1.0, 1.5)
(``data.buffer_ratio_min/max``, run ``lite0-buffer``), which is meant not to need the user to
pick the ratio, and one trained on the ``wide`` boxes with a wider crop (run ``lite0-wide``):

    .venv/bin/python experiments/coco_real.py --runs lite0-fp32 lite0-buffer lite0-wide --out /tmp/coco-real
    .venv/bin/python experiments/buffer_ratio.py

Writes ``experiments/results/buffer-ratio/report.md`` (Table 1 per protocol, run and ratio) and
the per-box Parquet next to it. Nothing is trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
from coco_real import RUNS, make_shards  # noqa: E402

from snapper.config import EvalConfig, JitterConfig, SnapSettings  # noqa: E402
from snapper.evaluation.evaluate import evaluate_checkpoint, evaluate_identity  # noqa: E402
from snapper.evaluation.metrics import format_table, summarize  # noqa: E402

PROTOCOLS = {
    "paper": JitterConfig(),
    "tight": JitterConfig(scale_min=0.72, scale_max=0.88),
    "wide": JitterConfig(shift=0.15, scale_min=0.75, scale_max=1.25),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--runs", nargs="+", default=["lite0-fp32", "lite0-buffer", "lite0-wide"], choices=list(RUNS))
    p.add_argument("--ratios", nargs="+", type=float, default=[1.0, 1.25, 1.5])
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "coco-real"))
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "buffer-ratio"))
    args = p.parse_args()
    for run in args.runs:
        if not (Path(args.runs_dir) / run / "last").is_dir():
            raise SystemExit(f"{Path(args.runs_dir) / run / 'last'}: no last checkpoint; "
                             f"run experiments/coco_real.py --runs {run} first")
    urls = make_shards(Path(args.data), ROOT / "shards" / "coco-real")
    shards = urls["select"] + urls["report"]
    tables = []
    for protocol in args.protocols:
        jitter = PROTOCOLS[protocol]
        # the rough boxes depend on the protocol only: one identity row per protocol
        identity = evaluate_identity(EvalConfig(shards=shards, jitter=jitter, snap=SnapSettings(device="cpu")))
        tables.append(identity.assign(method=f"{protocol}: identity"))
        for run in args.runs:
            for ratio in args.ratios:
                name = f"{protocol}: {RUNS[run][0]} @ buffer {ratio:g}"
                print(f"evaluating {name}", flush=True)
                cfg = EvalConfig(shards=shards, jitter=jitter, snap=SnapSettings(device="cpu", buffer_ratio=ratio))
                tables.append(evaluate_checkpoint(str(Path(args.runs_dir) / run / "last"), cfg, method=name))
    df = pd.concat(tables, ignore_index=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "boxes.parquet")
    summary = summarize(df)
    n = int((df["method"] == f"{args.protocols[0]}: identity").sum())
    md = (f"All held-out images of experiments/coco_real.py (selection and report halves, {n} boxes), "
          "each run's last checkpoint, snapped with the buffer ratio in the method name. Rough boxes: "
          "`paper` = the training jitter; `tight` = the same boxes 20% smaller (scale in [0.72, 0.88]); "
          "`wide` = shift +/-15%, scale in [0.75, 1.25].\n\n"
          + format_table(summary[summary["size"] == "all"]) + "\n## By COCO size bucket\n\n"
          + format_table(summary) + "\n")
    (out / "report.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
