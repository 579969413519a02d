"""The annotators' noise, measured: how rough boxes differ from the gold boxes of the same
objects, edge by edge, in units of the object's size and in pixels.

Why: the model moves an edge about as far as its training jitter moved it (README, "Buffer
Ratio"), so a team should know whether its crowd boxes are drawn loose, tight or shifted, and
how many fall outside the paper's jitter (+/-10% centre shift, scale in [0.9, 1.1]) before it
trusts a model trained on that jitter, or trains on its own noise instead.

Pairs: rough and gold annotations of the same object, matched by annotation id when the two
files share their ids, else per image (by ``file_name``) by IoU, greedily from the best pair
down to :data:`MIN_MATCH_IOU`; whatever is left unmatched is counted, never dropped silently.

Offsets per edge (left, top, right, bottom) are signed in image coordinates (positive = right
or down) and normalised by the gold box's extent on that axis; ``outward`` flips the sign of
left and top so that positive means "the rough box is larger than the object on that side".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from snapper.atomic import atomic_write_json, atomic_write_parquet
from snapper.config import ModelConfig
from snapper.data.coco import read_coco_json
from snapper.errors import BadFileError
from snapper.evaluation.metrics import SIZE_BUCKETS, size_bucket
from snapper.evaluation.plots import noise_histograms
from snapper.geometry import EDGE_NAMES, NOISE_COLUMNS, context_for, crop_coverage, paired_iou, xywh_to_xyxy

MIN_MATCH_IOU = 0.3  # below it two boxes are not the same object
PAPER_SHIFT = 0.1  # the paper's jitter: centre shift up to 10% of the size, scale in [0.9, 1.1]
PAPER_SCALE = (0.9, 1.1)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
OUTWARD_SIGN = np.array([-1.0, -1.0, 1.0, 1.0])  # left/top outward = negative image direction


class NoiseInputError(BadFileError):
    """Rough and gold files that cannot be paired (names the files and the problem)."""


@dataclass
class Pairs:
    table: pd.DataFrame  # one row per matched pair
    matched_by: str  # "annotation_id" or "iou"
    unmatched_rough: int
    unmatched_gold: int


def _annotations(path: str | os.PathLike[str]) -> tuple[dict[int, str], list[dict[str, Any]]]:
    """(image id -> file name, usable non-crowd annotations with a 4-number positive box)."""
    _, data = read_coco_json(path, error=NoiseInputError)
    names = {im["id"]: str(im.get("file_name")) for im in data["images"] if isinstance(im, dict) and "id" in im}
    anns = []
    for a in data["annotations"]:
        b = a.get("bbox") if isinstance(a, dict) else None
        if (a.get("iscrowd") or not isinstance(b, list) or len(b) != 4
                or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in b) or b[2] <= 0 or b[3] <= 0):
            continue
        anns.append(a)
    return names, anns


def _by_id(rough: list[dict], gold: list[dict]) -> list[tuple[dict, dict]]:
    g = {a.get("id"): a for a in gold}
    return [(r, g[r.get("id")]) for r in rough if r.get("id") in g]


def _by_iou(rough: list[dict], gold: list[dict], rnames: dict, gnames: dict) -> list[tuple[dict, dict]]:
    """Greedy best-IoU matching per image (images paired by file name)."""
    pairs = []
    for fname in set(rnames.values()) & set(gnames.values()):
        rs = [a for a in rough if rnames.get(a["image_id"]) == fname]
        gs = [a for a in gold if gnames.get(a["image_id"]) == fname]
        if not rs or not gs:
            continue
        rb, gb = xywh_to_xyxy(np.array([a["bbox"] for a in rs], float)), xywh_to_xyxy(np.array([a["bbox"] for a in gs], float))
        iou = paired_iou(np.repeat(rb, len(gb), 0), np.tile(gb, (len(rb), 1))).reshape(len(rb), len(gb))
        while iou.size and iou.max() >= MIN_MATCH_IOU:
            i, j = np.unravel_index(int(iou.argmax()), iou.shape)
            pairs.append((rs[i], gs[j]))
            iou[i, :], iou[:, j] = -1.0, -1.0
    return pairs


def pair_boxes(rough_file: str | os.PathLike[str], gold_file: str | os.PathLike[str]) -> Pairs:
    """Rough and gold boxes of the same objects (module doc); refuses files with no pair."""
    rnames, rough = _annotations(rough_file)
    gnames, gold = _annotations(gold_file)
    if not rough or not gold:
        raise NoiseInputError(f"{rough_file if not rough else gold_file}: no usable (non-crowd, finite, non-empty) boxes")
    shared = {a.get("id") for a in rough} & {a.get("id") for a in gold}
    by_id = len(shared) >= 0.5 * min(len(rough), len(gold))
    pairs = _by_id(rough, gold) if by_id else _by_iou(rough, gold, rnames, gnames)
    if not pairs:
        raise NoiseInputError(f"{rough_file} and {gold_file}: no box pairs (annotation ids differ and no boxes of the "
                              f"same image file overlap by IoU >= {MIN_MATCH_IOU})")
    return Pairs(_pair_table(pairs, gnames), "annotation_id" if by_id else "iou",
                 len(rough) - len(pairs), len(gold) - len(pairs))


def _pair_table(pairs: list[tuple[dict, dict]], gnames: dict) -> pd.DataFrame:
    r = xywh_to_xyxy(np.array([p[0]["bbox"] for p in pairs], float))
    g = xywh_to_xyxy(np.array([p[1]["bbox"] for p in pairs], float))
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    extent = np.stack([gw, gh, gw, gh], 1)
    px = r - g
    norm = px / extent
    rw, rh = r[:, 2] - r[:, 0], r[:, 3] - r[:, 1]
    shift_x = ((r[:, 0] + r[:, 2]) - (g[:, 0] + g[:, 2])) / 2 / gw
    shift_y = ((r[:, 1] + r[:, 3]) - (g[:, 1] + g[:, 3])) / 2 / gh
    scale_x, scale_y = rw / gw, rh / gh
    lo, hi = PAPER_SCALE
    inside = ((np.abs(shift_x) <= PAPER_SHIFT) & (np.abs(shift_y) <= PAPER_SHIFT)
              & (scale_x >= lo) & (scale_x <= hi) & (scale_y >= lo) & (scale_y <= hi))
    df = pd.DataFrame({
        "rough_id": [p[0].get("id") for p in pairs], "gold_id": [p[1].get("id") for p in pairs],
        "file_name": [gnames.get(p[1]["image_id"]) for p in pairs],
        "size": size_bucket(gw * gh), "iou": paired_iou(r, g),
        "shift_x": shift_x, "shift_y": shift_y, "scale_x": scale_x, "scale_y": scale_y,
        "inside_paper_jitter": inside,
    })
    for k, e in enumerate(EDGE_NAMES):
        df[f"gold_{e}"], df[f"rough_{e}"] = g[:, k], r[:, k]
        df[f"px_{e}"], df[f"norm_{e}"] = px[:, k], norm[:, k]
        df[f"outward_{e}"] = OUTWARD_SIGN[k] * norm[:, k]
    return df


def _stats(v: np.ndarray) -> dict[str, float]:
    return {"mean": float(v.mean()), "std": float(v.std()),
            **{f"q{int(q * 100):02d}": float(np.quantile(v, q)) for q in QUANTILES}}


def noise_report(pairs: Pairs, context: float = ModelConfig().context) -> dict[str, Any]:
    """Per-edge statistics of the pairs (module doc), overall and in pixels by size bucket, and
    whether crops of ``context`` (the model's) hold the true boxes of such rough boxes."""
    df = pairs.table
    offsets = df[list(NOISE_COLUMNS)].to_numpy(np.float64)
    outward = df[[f"outward_{e}" for e in EDGE_NAMES]].to_numpy()
    by_size = {}
    for s in SIZE_BUCKETS:
        sub = df[df["size"] == s]
        if len(sub):
            by_size[s] = {"n": int(len(sub)), **{e: {"median_abs_px": float(sub[f"px_{e}"].abs().median()),
                                                      "mean_px": float(sub[f"px_{e}"].mean())} for e in EDGE_NAMES}}
    return {
        "n_pairs": int(len(df)), "matched_by": pairs.matched_by,
        "unmatched_rough": pairs.unmatched_rough, "unmatched_gold": pairs.unmatched_gold,
        "mean_iou": float(df["iou"].mean()),
        "share_inside_paper_jitter": float(df["inside_paper_jitter"].mean()),
        "context": context, "share_inside_crop": crop_coverage(offsets, context),
        "context_for_99pct": context_for(offsets),
        "outward": {e: _stats(outward[:, k]) for k, e in enumerate(EDGE_NAMES)},
        "shift": {"x": _stats(df["shift_x"].to_numpy()), "y": _stats(df["shift_y"].to_numpy())},
        "scale": {"x": _stats(df["scale_x"].to_numpy()), "y": _stats(df["scale_y"].to_numpy())},
        "edge_correlation": pd.DataFrame(outward, columns=list(EDGE_NAMES)).corr().round(3).to_dict(),
        "pixels_by_size": by_size,
    }


def format_report(report: dict[str, Any]) -> str:
    """What a person reads first: per edge, how far outward the rough boxes are, in % of size."""
    lines = [f"{report['n_pairs']} pairs (matched by {report['matched_by']}; unmatched: "
             f"{report['unmatched_rough']} rough, {report['unmatched_gold']} gold), mean IoU {report['mean_iou']:.3f}, "
             f"{100 * report['share_inside_paper_jitter']:.1f}% inside the paper's jitter; crops of context "
             f"{report['context']:g} hold {100 * report['share_inside_crop']:.1f}% of the true boxes "
             f"(99% need {report['context_for_99pct']:g})",
             f"{'edge':<7} {'outward mean':>12} {'std':>7} {'5%':>7} {'median':>7} {'95%':>7}   (% of the object's size)"]
    for e in EDGE_NAMES:
        s = report["outward"][e]
        lines.append(f"{e:<7} {100 * s['mean']:>+12.1f} {100 * s['std']:>7.1f} {100 * s['q05']:>+7.1f} "
                     f"{100 * s['q50']:>+7.1f} {100 * s['q95']:>+7.1f}")
    return "\n".join(lines)


def write_noise_report(pairs: Pairs, out_dir: str | os.PathLike[str],
                       context: float = ModelConfig().context) -> dict[str, Path]:
    """``pairs.parquet`` (``jitter.noise_file`` for ``jitter.mode=empirical``), ``noise.json``
    and ``noise.png`` (histograms per edge) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = noise_report(pairs, context)
    return {"pairs": atomic_write_parquet(pairs.table, out / "pairs.parquet"),
            "report": atomic_write_json(out / "noise.json", json.loads(json.dumps(report)), indent=2),
            "plot": noise_histograms(pairs.table, out / "noise.png")}
