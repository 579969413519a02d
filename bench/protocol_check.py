"""Pin the jitter protocol: jittered ground truth vs the paper's baseline row.

Jitters every non-crowd box of a COCO-format folder with ``snapper.geometry.jitter_boxes``
(the paper's protocol, default ``JitterConfig``), for several seeds, and prints the paper's
Table 1 columns for the unadjusted rough boxes next to the published row. If these numbers
drift from the paper's, the protocol (or the metrics) changed, and no model number that
follows is comparable with the paper.

    .venv/bin/python bench/protocol_check.py [../shared/data/coco128-train] [--seeds 20]

The COCO JSON is read with plain ``json`` on purpose: the check must not depend on the
project's own loader, whose validation it would otherwise inherit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from snapper.config import JitterConfig
from snapper.evaluation.metrics import TABLE1_COLUMNS, box_table, format_table, summarize
from snapper.geometry import jitter_boxes, xywh_to_xyxy

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "coco128-train"

# SPEC, Table 1, row "jittered COCO boxes" (COCO val2017).
PAPER_ROW = {"miou": 81.9, "iou_gt_0.9": 8.6, "edge_lt_1px": 30.4, "edge_lt_3px": 57.9,
             "corner_lt_1px": 12.0, "corner_lt_3px": 38.1}


def load_groundtruth(ann_file: Path) -> list[tuple[int, float, float, np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: (image_id, width, height, xyxy boxes, annotation ids, COCO areas); no crowd."""
    with open(ann_file) as f:
        data = json.load(f)
    sizes = {im["id"]: (float(im["width"]), float(im["height"])) for im in data["images"]}
    per_image: dict[int, list[dict]] = defaultdict(list)
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        if ann["image_id"] not in sizes:
            raise ValueError(f"{ann_file}: annotation {ann['id']} refers to unknown image {ann['image_id']}")
        per_image[ann["image_id"]].append(ann)
    out = []
    for image_id in sorted(per_image):
        anns = per_image[image_id]
        w, h = sizes[image_id]
        boxes = xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float64))
        ids = np.array([a["id"] for a in anns], dtype=np.int64)
        areas = np.array([a.get("area", np.nan) for a in anns], dtype=np.float64)
        out.append((image_id, w, h, boxes, ids, areas))
    return out


def jitter_table(data_dir: Path, seeds: int = 20, cfg: JitterConfig | None = None) -> pd.DataFrame:
    """Per-box table of the jittered boxes (as ``pred``) for seeds ``0..seeds-1``."""
    images = load_groundtruth(Path(data_dir) / "annotations.json")
    tables = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        for image_id, w, h, boxes, ids, areas in images:
            rough = jitter_boxes(boxes, w, h, rng, cfg)
            tables.append(box_table(rough, boxes, image_id=np.full(len(ids), image_id), annotation_id=ids,
                                    area=areas, method="jittered", extra={"seed": np.full(len(ids), seed)}))
    return pd.concat(tables, ignore_index=True)


def protocol_summary(data_dir: Path, seeds: int = 20, cfg: JitterConfig | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(mean over seeds, std over seeds) of Table 1 per size bucket, and boxes per seed.

    Every seed jitters the same boxes, so pooling all seeds equals the mean of per-seed
    numbers; the per-seed spread says how much of a gap to the paper is just noise.
    """
    df = jitter_table(data_dir, seeds, cfg)
    per_seed = summarize(df, by=("method", "seed"))
    cols = ["n_boxes", *TABLE1_COLUMNS]
    grouped = per_seed.groupby(["method", "size"], sort=False)[cols]
    mean, std = grouped.mean().reset_index(), grouped.std(ddof=0).reset_index()
    n_per_seed = int((df["seed"] == 0).sum())
    return mean, std, n_per_seed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", nargs="?", default=str(DEFAULT_DATA))
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args(argv)
    ann = Path(args.data_dir) / "annotations.json"
    if not ann.is_file():
        print(f"no {ann}", file=sys.stderr)
        return 2
    mean, std, n = protocol_summary(Path(args.data_dir), args.seeds)
    print(f"{Path(args.data_dir).name}: {n} non-crowd boxes, jittered with JitterConfig() "
          f"(mean of {args.seeds} seeds)\n")
    mean["n_boxes"] = mean["n_boxes"].round().astype("int64")
    print(format_table(mean))
    paper = pd.DataFrame([{"method": "paper (COCO val)", "size": "all", "n_boxes": None, **PAPER_ROW}])
    print(format_table(paper))
    all_std = std[std["size"] == "all"].iloc[0]
    print("std over seeds (all): " + ", ".join(f"{TABLE1_COLUMNS[c]} {all_std[c]:.2f}" for c in TABLE1_COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
