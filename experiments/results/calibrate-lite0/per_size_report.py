"""One map against a map per rough-box size, on the report split: writes ``per_size_report.json``
beside this file. About a minute on 2 CPU cores, after both calibrations exist:

    .venv/bin/snapper calibrate ... --out runs/calibrated/lite0-500 --no-per-size   # one map (before)
    .venv/bin/snapper calibrate ... --out runs/calibrated/lite0-500-per-size        # per size (now the default)
    .venv/bin/python experiments/results/calibrate-lite0/per_size_report.py

Nothing is fitted or chosen here: both maps were fitted on the selection split, and this only
measures them on the report split's raw confidences over the same 10 jitter draws, read through
the stored calibrations exactly as the read-out reads them (rough box's area for the per-size
one). Besides what ``calibration.json`` holds (ECE per *true* size bucket), it gives the ECE per
size bucket of the *rough* box (the buckets the per-size maps are keyed by) and a paired
bootstrap over report images of per-size minus one map.
"""

from __future__ import annotations

import dataclasses
import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd

from snapper.config import EvalConfig, SnapSettings
from snapper.evaluation.calibration import (
    ROUGH_AREA,
    ece_interval,
    edge_pairs,
    expected_calibration_error,
    review_catch,
)
from snapper.evaluation.evaluate import evaluate_checkpoint
from snapper.models.checkpoint import read_config
from snapper.models.edges import calibrate_confidence, calibration_buckets

HERE = Path(__file__).resolve().parent
SOURCE = "runs/adapt-champion/lite0/best"
CALIBRATED = {"one map": "runs/calibrated/lite0-500", "per size": "runs/calibrated/lite0-500-per-size"}
REPORT = "shards/coco-real/*/report-*.tar"
DRAWS, N_BOOT = 10, 1000


def report_edges() -> pd.DataFrame:
    frames = []
    for draw in range(DRAWS):
        cfg = EvalConfig(shards=sorted(glob.glob(REPORT)), seed=draw, snap=dataclasses.replace(SnapSettings(), device="cpu"))
        df = evaluate_checkpoint(SOURCE, cfg, method="snapper", calibrated=False)
        df[ROUGH_AREA] = df["rough_w"] * df["rough_h"]
        frames.append(edge_pairs(df, 3.0, by=(ROUGH_AREA,)).assign(draw=draw))
    e = pd.concat(frames, ignore_index=True)
    e["rough_size"] = calibration_buckets(e[ROUGH_AREA])
    return e


def ece_row(conf: np.ndarray, e: pd.DataFrame) -> dict[str, object]:
    lo, hi = ece_interval(conf, e["hit"], e["image"], n_boot=N_BOOT)
    return {"n_edges": len(e), "ece": expected_calibration_error(conf, e["hit"]), "ci95": [lo, hi]}


def paired(a: np.ndarray, b: np.ndarray, e: pd.DataFrame, seed: int = 0) -> dict[str, object]:
    """ECE(a) - ECE(b) over image resamples."""
    rng = np.random.default_rng(seed)
    codes, images = pd.factorize(e["image"])
    rows = [np.flatnonzero(codes == k) for k in range(len(images))]
    h = e["hit"].to_numpy()
    d = []
    for _ in range(N_BOOT):
        idx = np.concatenate([rows[k] for k in rng.integers(0, len(images), len(images))])
        d.append(expected_calibration_error(a[idx], h[idx]) - expected_calibration_error(b[idx], h[idx]))
    return {"point": expected_calibration_error(a, h) - expected_calibration_error(b, h),
            "ci95": np.percentile(d, [2.5, 97.5]).tolist(), "share_below_0": float(np.mean(np.array(d) < 0))}


def main() -> None:
    e = report_edges()
    raw = e["conf"].to_numpy()
    area = e[ROUGH_AREA].to_numpy()
    conf = {"raw": raw, **{k: calibrate_confidence(raw, read_config(v)[0].calibration, area)
                           for k, v in CALIBRATED.items()}}
    bad = e["dev"].to_numpy() >= 3.0
    out: dict[str, object] = {"report": REPORT, "draws": DRAWS, "n_boot": N_BOOT, "calibrations": CALIBRATED}
    for column in ("size", "rough_size"):
        table = {}
        for name, c in conf.items():
            table[name] = {"all": ece_row(c, e)}
            for bucket in ("small", "medium", "large"):
                m = (e[column] == bucket).to_numpy()
                table[name][bucket] = ece_row(c[m], e[m])
        out[f"ece_by_{'true' if column == 'size' else 'rough'}_size"] = table
    out["per_size_minus_one_map"] = {"all": paired(conf["per size"], conf["one map"], e)}
    for bucket in ("small", "medium", "large"):
        m = (e["size"] == bucket).to_numpy()
        out["per_size_minus_one_map"][bucket] = paired(conf["per size"][m], conf["one map"][m], e[m])
    out["review_catch_10pct"] = {name: {"all draws": review_catch(c, bad),
                                        "first draw": review_catch(c[e["draw"] == 0], bad[e["draw"] == 0])}
                                 for name, c in conf.items()}
    out["hit_rate_by_rough_size"] = e.groupby("rough_size")["hit"].mean().to_dict()
    print(json.dumps(out, indent=2))
    (HERE / "per_size_report.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
