"""How the calibration method was chosen (on the selection split only) and how far an ECE on
this data can be read: writes ``study.json`` beside this file. About 3 minutes on 2 CPU cores.

    .venv/bin/python experiments/results/calibrate-lite0/study.py

1. Noise floor: the ECE (15 equal-width bins) that a perfectly calibrated confidence would show
   on one jitter draw of each split (hits drawn as Bernoulli(confidence)), and the raw ECE's
   95% bootstrap interval over images.
2. Method: 5-fold cross-validation over the selection split's images (5 repeats), each map
   fitted on the training folds' edges from 1 or 10 jitter draws and scored on the held-out
   images' edges over 20 draws (ECE overall and per size bucket, log-loss, review catch). The
   "-by-size" maps fit one map per COCO size bucket of the *rough* box (what inference knows).
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
    ece_floor,
    ece_interval,
    edge_pairs,
    expected_calibration_error,
    fit_map,
    review_catch,
)
from snapper.evaluation.evaluate import evaluate_checkpoint
from snapper.models.edges import calibrate_confidence

HERE = Path(__file__).resolve().parent
CHECKPOINT = "runs/adapt-champion/lite0/best"
SHARDS = {"selection": "shards/coco-real/*/select-*.tar", "report": "shards/coco-real/*/report-*.tar"}
EVAL_DRAWS, FOLDS, REPEATS = 20, 5, 5
METHODS = ["raw", "platt", "beta", "isotonic", "platt-by-size", "beta-by-size"]


def edges(split: str, seed: int) -> pd.DataFrame:
    cfg = EvalConfig(shards=sorted(glob.glob(SHARDS[split])), seed=seed,
                     snap=dataclasses.replace(SnapSettings(), device="cpu"))
    df = evaluate_checkpoint(CHECKPOINT, cfg, method="snapper", calibrated=False)
    area = df["rough_w"] * df["rough_h"]  # the rough box's COCO size bucket: known at inference
    df["rough_size"] = np.where(area < 32**2, "small", np.where(area < 96**2, "medium", "large"))
    return edge_pairs(df, 3.0, by=("rough_size",)).assign(draw=seed)


def floor_report(e: pd.DataFrame) -> dict[str, float]:
    floor, floor_hi = ece_floor(e["conf"], n_sim=2000)
    sims = []
    rng = np.random.default_rng(1)
    c = e["conf"].to_numpy()
    for _ in range(2000):
        sims.append(expected_calibration_error(c, rng.random(len(c)) < c))
    lo, hi = ece_interval(e["conf"], e["hit"], e["image"], n_boot=2000)
    return {"n_edges": len(e), "raw_ece": expected_calibration_error(e["conf"], e["hit"]), "raw_ece_ci95": [lo, hi],
            "floor_mean": floor, "floor_p5": float(np.percentile(sims, 5)), "floor_p95": floor_hi,
            "p_floor_le_0.017": float(np.mean(np.array(sims) <= 0.017))}


def predictor(method: str, train: pd.DataFrame):
    if method == "raw":
        return lambda t: t["conf"].to_numpy()
    if method.endswith("-by-size"):
        base = method.removesuffix("-by-size")
        maps = {s: fit_map(g["conf"], g["hit"], base)[0] for s, g in train.groupby("rough_size")}

        def per_size(t: pd.DataFrame) -> np.ndarray:
            out = np.empty(len(t))
            for s, idx in t.groupby("rough_size").indices.items():
                out[idx] = calibrate_confidence(t["conf"].to_numpy()[idx], maps[s])
            return out
        return per_size
    knots = fit_map(train["conf"], train["hit"], method)[0]
    return lambda t: calibrate_confidence(t["conf"].to_numpy(), knots)


def scores(p: np.ndarray, e: pd.DataFrame) -> dict[str, float]:
    h, q = e["hit"].to_numpy(), np.clip(p, 1e-6, 1 - 1e-6)
    out = {"ece": expected_calibration_error(p, h),
           "logloss": float(-(h * np.log(q) + (1 - h) * np.log(1 - q)).mean()),
           "review_catch_10pct": review_catch(p, e["dev"].to_numpy() >= 3.0)}
    for size in ("small", "medium", "large"):
        m = (e["size"] == size).to_numpy()
        out[f"ece_{size}"] = expected_calibration_error(p[m], h[m])
    return out


def cross_validate(sel: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    images = sel["image"].unique()
    rows = []
    for fit_draws in (1, 10):
        for repeat in range(REPEATS):
            fold = sel["image"].map(dict(zip(images, rng.permutation(len(images)) % FOLDS))).to_numpy()
            oof = {m: np.full(len(sel), np.nan) for m in METHODS}
            for k in range(FOLDS):
                train = sel[(fold != k) & (sel["draw"] < fit_draws)]
                test = sel[fold == k].reset_index(drop=True)
                for m in METHODS:
                    oof[m][fold == k] = predictor(m, train)(test)
            rows += [{"fit_draws": fit_draws, "repeat": repeat, "method": m, **scores(oof[m], sel)} for m in METHODS]
    return pd.DataFrame(rows)


def main() -> None:
    sel = pd.concat([edges("selection", s) for s in range(EVAL_DRAWS)], ignore_index=True)
    report = edges("report", 0)
    floors = {"selection": floor_report(sel[sel["draw"] == 0]), "report": floor_report(report)}
    cv = cross_validate(sel)
    mean = cv.groupby(["fit_draws", "method"], sort=False).mean(numeric_only=True).drop(columns="repeat")
    sd = cv.groupby(["fit_draws", "method"], sort=False)["ece"].std()
    table = mean.assign(ece_sd_over_repeats=sd).reset_index()
    pd.set_option("display.width", 200)
    print(json.dumps(floors, indent=2))
    print(table.round(4).to_string(index=False))
    record = {"checkpoint": CHECKPOINT, "shards": SHARDS, "bins": 15, "hit": "deviance < 3 px",
              "single_draw_noise_floor": floors, "selection_cv": {
                  "folds": FOLDS, "repeats": REPEATS, "grouped_by": "image", "scored_over_draws": EVAL_DRAWS,
                  "n_edges_scored": len(sel), "mean": table.to_dict(orient="records")}}
    (HERE / "study.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
