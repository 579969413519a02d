"""Does mirroring at test time help? ``Snapper(flip=True)`` reads every crop (and zoom strip)
also mirrored and averages the two edge distributions, at twice the model time.

    .venv/bin/python experiments/flip_tta.py        # after experiments/coco_real.py

Evaluates the checkpoints ``experiments/coco_real.py`` trained (its ``runs.json``) on the same
report split, with and without flip, and writes ``experiments/results/flip-tta/report.md``.
Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
from coco_real import ONE_PASS, make_shards  # noqa: E402

from snapper.config import EvalConfig, SnapSettings  # noqa: E402
from snapper.evaluation.evaluate import evaluate_checkpoint  # noqa: E402
from snapper.evaluation.metrics import format_table, summarize  # noqa: E402
from snapper.models.checkpoint import read_config  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--runs", default=str(ROOT / "experiments" / "results" / "coco-real" / "runs.json"))
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "flip-tta"))
    args = p.parse_args()
    runs = Path(args.runs)
    if not runs.is_file():
        raise SystemExit(f"{runs}: run experiments/coco_real.py first")
    checkpoints = json.loads(runs.read_text())["checkpoints"]
    urls = make_shards(Path(args.data), ROOT / "shards" / "coco-real")
    tables = []
    for method, ckpt in checkpoints.items():
        if not Path(ckpt).is_dir():
            print(f"{method}: {ckpt} is gone; skipped", file=sys.stderr)
            continue
        model_cfg = read_config(ckpt)[0]
        if model_cfg.head != "edges":  # nothing to average for the regression baseline
            continue
        passes = 1 if method.endswith(ONE_PASS) else max(model_cfg.passes)
        for flip in (False, True):
            cfg = EvalConfig(shards=urls["report"], snap=SnapSettings(device="cpu", flip=flip, passes=passes))
            name = method + (" + flip" if flip else "")
            print(f"evaluating {name}", flush=True)
            tables.append(evaluate_checkpoint(ckpt, cfg, method=name))
    df = pd.concat(tables, ignore_index=True)
    summary = summarize(df)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "boxes.parquet")
    md = ("Report split of experiments/coco_real.py, its checkpoints, each with and without flip "
          "test-time augmentation.\n\n" + format_table(summary) + "\n")
    (out / "report.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
