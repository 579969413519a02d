"""How the calibration method was chosen (on the selection split only) and how far an ECE on
this data can be read: writes ``study.json`` beside this file. About 3 minutes on 2 CPU cores.

    .venv/bin/python experiments/results/calibrate-lite0/study.py

1. Noise floor: the ECE (15 equal-width bins) that a perfectly calibrated confidence would show
   on one jitter draw of each split (hits drawn as Bernoulli(confidence)), and the raw ECE's
   95% bootstrap interval over images.
2. Method: 5-fold cross-validation over the selection split's images (5 repeats), each map
   fitted on the training folds' edges from 1 or 10 jitter draws and scored on the held-out
   images' edges over 20 draws (ECE overall and per size bucket, log-loss, review catch). The
   "-by-size" maps fit one map per COCO size bucket of the *rough* box (what inference knows);
   "beta-per-size" is that map as ``snapper calibrate --per-size`` builds and the read-out reads
   it (:func:`snapper.evaluation.calibration.fit_size_maps`: a bucket with under
   ``MIN_BUCKET_EDGES`` edges per draw reads the map of every box;
   :func:`snapper.models.edges.calibrate_confidence` with the rough box's area).
   "beta-per-size-30-misses" is the minimum first tried, fixed before this CV ran: a bucket
   reads the map of every box unless it has 30 hits and 30 misses per draw (10 events per
   coefficient). Small rough boxes miss too rarely for it in every fold, and fell back.
3. Default: a paired bootstrap over selection images of the held-out differences
   beta-per-size minus beta (one map), 10 fit draws: log-loss, ECE and review catch. The rule,
   fixed before it ran: per-size is the default when its mean held-out log-loss is lower (the
   rule that chose beta) and the review catch's 95% interval does not lie below 0.

``--edges-cache FILE.parquet`` keeps the scored edges, so that a rerun skips the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd

from snapper.config import EvalConfig, SnapSettings
from snapper.evaluation.calibration import (
    MIN_BUCKET_EDGES,
    ROUGH_AREA,
    ece_floor,
    ece_interval,
    edge_pairs,
    expected_calibration_error,
    fit_map,
    fit_size_maps,
    review_catch,
)
from snapper.evaluation.evaluate import evaluate_checkpoint
from snapper.models.edges import calibrate_confidence, calibration_buckets

HERE = Path(__file__).resolve().parent
CHECKPOINT = "runs/adapt-champion/lite0/best"
SHARDS = {"selection": "shards/coco-real/*/select-*.tar", "report": "shards/coco-real/*/report-*.tar"}
EVAL_DRAWS, FOLDS, REPEATS = 20, 5, 5
METHODS = ["raw", "platt", "beta", "isotonic", "platt-by-size", "beta-by-size", "beta-per-size",
           "beta-per-size-30-misses"]
MIN_EVENTS = 30  # beta-per-size-30-misses: hits and misses per draw a bucket needed for its own map
N_BOOT = 500  # image resamples per repeat of the paired bootstrap


def edges(split: str, seed: int) -> pd.DataFrame:
    cfg = EvalConfig(shards=sorted(glob.glob(SHARDS[split])), seed=seed,
                     snap=dataclasses.replace(SnapSettings(), device="cpu"))
    df = evaluate_checkpoint(CHECKPOINT, cfg, method="snapper", calibrated=False)
    df[ROUGH_AREA] = df["rough_w"] * df["rough_h"]  # the rough box's COCO size bucket: known at inference
    df["rough_size"] = calibration_buckets(df[ROUGH_AREA])
    return edge_pairs(df, 3.0, by=("rough_size", ROUGH_AREA)).assign(draw=seed)


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


FALLBACKS: dict[str, int] = {}  # fits of beta-per-size in which a bucket read the map of every box


def predictor(method: str, train: pd.DataFrame):
    if method == "raw":
        return lambda t: t["conf"].to_numpy()
    if method == "beta-per-size":  # as built: snapper calibrate --per-size, and the read-out
        maps, info = fit_size_maps(train, "beta", MIN_BUCKET_EDGES)
        for bucket, entry in info.items():
            FALLBACKS[bucket] = FALLBACKS.get(bucket, 0) + (not entry["own_map"])
        return lambda t: calibrate_confidence(t["conf"].to_numpy(), maps, t[ROUGH_AREA].to_numpy())
    if method == "beta-per-size-30-misses":
        maps, info = fit_size_maps(train, "beta", MIN_BUCKET_EDGES)
        draws = train["draw"].nunique()
        maps = {k: v for k, v in maps.items()
                if k == "all" or min(info[k]["n_hits"], info[k]["n_misses"]) >= MIN_EVENTS * draws}
        return lambda t: calibrate_confidence(t["conf"].to_numpy(), maps, t[ROUGH_AREA].to_numpy())
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


def _logloss(p: np.ndarray, h: np.ndarray) -> float:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(h * np.log(q) + (1 - h) * np.log(1 - q)).mean())


def paired_bootstrap(sel: pd.DataFrame, a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """(N_BOOT, 3) differences a - b of log-loss, ECE and review catch over image resamples."""
    rng = np.random.default_rng(seed)
    codes, images = pd.factorize(sel["image"])
    rows_of = [np.flatnonzero(codes == k) for k in range(len(images))]
    h, bad = sel["hit"].to_numpy(), sel["dev"].to_numpy() >= 3.0
    out = []
    for _ in range(N_BOOT):
        idx = np.concatenate([rows_of[k] for k in rng.integers(0, len(images), len(images))])
        out.append([_logloss(a[idx], h[idx]) - _logloss(b[idx], h[idx]),
                    expected_calibration_error(a[idx], h[idx]) - expected_calibration_error(b[idx], h[idx]),
                    review_catch(a[idx], bad[idx]) - review_catch(b[idx], bad[idx])])
    return np.asarray(out)


def cross_validate(sel: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(0)
    images = sel["image"].unique()
    rows, boots, point = [], [], []
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
            if fit_draws == 10:
                a, b = oof["beta-per-size"], oof["beta"]
                boots.append(paired_bootstrap(sel, a, b, repeat))
                point.append([_logloss(a, sel["hit"].to_numpy()) - _logloss(b, sel["hit"].to_numpy()),
                              scores(a, sel)["ece"] - scores(b, sel)["ece"],
                              scores(a, sel)["review_catch_10pct"] - scores(b, sel)["review_catch_10pct"]])
    pooled, point_arr = np.concatenate(boots), np.asarray(point)
    diff = {name: {"mean_over_repeats": float(point_arr[:, j].mean()),
                   "per_repeat": point_arr[:, j].tolist(),
                   "ci95_image_bootstrap": np.percentile(pooled[:, j], [2.5, 97.5]).tolist(),
                   "share_of_resamples_below_0": float((pooled[:, j] < 0).mean())}
            for j, name in enumerate(["logloss", "ece", "review_catch_10pct"])}
    return pd.DataFrame(rows), diff


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edges-cache", type=Path, help="parquet of the scored edges: read if it exists, else written")
    args = ap.parse_args()
    if args.edges_cache and args.edges_cache.exists():
        both = pd.read_parquet(args.edges_cache)
        sel, report = both[both["split"] == "selection"], both[both["split"] == "report"]
        sel, report = (f.drop(columns="split").reset_index(drop=True) for f in (sel, report))
    else:
        sel = pd.concat([edges("selection", s) for s in range(EVAL_DRAWS)], ignore_index=True)
        report = edges("report", 0)
        if args.edges_cache:
            pd.concat([sel.assign(split="selection"), report.assign(split="report")]).to_parquet(args.edges_cache)
    floors = {"selection": floor_report(sel[sel["draw"] == 0]), "report": floor_report(report)}
    cv, diff = cross_validate(sel)
    mean = cv.groupby(["fit_draws", "method"], sort=False).mean(numeric_only=True).drop(columns="repeat")
    sd = cv.groupby(["fit_draws", "method"], sort=False)["ece"].std()
    table = mean.assign(ece_sd_over_repeats=sd).reset_index()
    pd.set_option("display.width", 200)
    print(json.dumps(floors, indent=2))
    print(table.round(4).to_string(index=False))
    print("beta-per-size minus beta (10 fit draws):", json.dumps(diff, indent=2))
    print("fits in which a bucket read the map of every box:", FALLBACKS)
    record = {"checkpoint": CHECKPOINT, "shards": SHARDS, "bins": 15, "hit": "deviance < 3 px",
              "single_draw_noise_floor": floors, "selection_cv": {
                  "folds": FOLDS, "repeats": REPEATS, "grouped_by": "image", "scored_over_draws": EVAL_DRAWS,
                  "n_edges_scored": len(sel), "mean": table.to_dict(orient="records"),
                  "per_size_minus_beta": diff, "min_bucket_edges_per_draw": MIN_BUCKET_EDGES,
                  "per_size_fallbacks": {"fits": 2 * REPEATS * FOLDS, **FALLBACKS}}}
    (HERE / "study.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
