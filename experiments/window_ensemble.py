"""Is the model's edge error crop placement (variance an ensemble averages out) or the image
itself (bias no re-reading removes)? Snap every box from K windows: the rough box itself and
K-1 copies shifted by up to 6% of its size and scaled by 0.92-1.08 (one fixed set of offsets,
seeded), then combine each edge over the K reads (median; confidence-weighted mean).

If the error were placement noise, the combined edges would land closer to the truth than the
single read, and the spread of the K reads would say which edges are wrong (what the dataset
audit needs: issue 25, item 4). Nothing is trained; nothing is chosen from this.

    .venv/bin/python experiments/window_ensemble.py [--split select|report] [--k 9]

Data: the three COCO folders of ``../shared/data`` split as ``coco_real.py`` splits them; rough
boxes: the paper's jitter seeded per annotation id (seed 0); boxes of at least 16 px^2, crowd
boxes left out. Model: ``runs/adapt-champion/lite0/best`` (made by ``experiments/adapt.py``).
Writes ``experiments/results/window-ensemble/<split>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt import merged_coco  # noqa: E402

from snapper.atomic import atomic_write_text  # noqa: E402
from snapper.geometry import clip_boxes, jitter_by_annotation, paired_iou, xywh_to_xyxy, xyxy_to_xywh  # noqa: E402
from snapper.imageio import load_image  # noqa: E402
from snapper.inference.snap import Snapper  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHAMPION = REPO / "runs" / "adapt-champion" / "lite0" / "best"
SHIFT, SCALE = 0.06, 0.08
FLAG = 0.10


def windows(k: int, seed: int = 0) -> np.ndarray:
    """(K, 3) offsets (dx, dy as shares of the box, scale); the first is the rough box itself."""
    rng = np.random.default_rng(seed)
    rest = rng.uniform([-SHIFT, -SHIFT, 1 - SCALE], [SHIFT, SHIFT, 1 + SCALE], size=(k - 1, 3))
    return np.vstack([[0.0, 0.0, 1.0], rest])


def moved(rough: np.ndarray, dx: float, dy: float, s: float, width: int, height: int) -> np.ndarray:
    w, h = rough[:, 2] - rough[:, 0], rough[:, 3] - rough[:, 1]
    cx, cy = (rough[:, 0] + rough[:, 2]) / 2 + dx * w, (rough[:, 1] + rough[:, 3]) / 2 + dy * h
    return clip_boxes(np.stack([cx - w * s / 2, cy - h * s / 2, cx + w * s / 2, cy + h * s / 2], 1), width, height)


def read_all(snapper: Snapper, coco: dict, data: Path, ids: set[int], offsets: np.ndarray) -> dict[str, np.ndarray]:
    """Truth, rough, the K reads (K, N, 4) and their confidences, over every box of ``ids``."""
    truth, rough, reads, confs = [], [], [], []
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        if a["image_id"] in ids and not a.get("iscrowd") and a["bbox"][2] * a["bbox"][3] >= 16:
            by_image.setdefault(a["image_id"], []).append(a)
    for im in coco["images"]:
        anns = by_image.get(im["id"])
        if not anns:
            continue
        img = load_image(str(data / im["file_name"]))
        t = xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float64))
        r = jitter_by_annotation(t, [a["id"] for a in anns], img.width, img.height, seed=0)
        res = [snapper.snap(img, xyxy_to_xywh(moved(r, *o, img.width, img.height))) for o in offsets]
        truth.append(t)
        rough.append(r)
        reads.append(np.stack([xywh_to_xyxy(x.boxes) for x in res]))
        confs.append(np.stack([x.confidence for x in res]))
    return {"truth": np.concatenate(truth), "rough": np.concatenate(rough),
            "reads": np.concatenate(reads, axis=1), "conf": np.concatenate(confs, axis=1)}


def row(name: str, boxes: np.ndarray, truth: np.ndarray) -> str:
    d, iou = np.abs(boxes - truth), paired_iou(boxes, truth)
    return (f"| {name} | {100 * iou.mean():.1f} | {100 * (iou > 0.9).mean():.1f} | {100 * (d < 1).mean():.1f} | "
            f"{100 * (d < 3).mean():.1f} |")


def catch(score: np.ndarray, bad: np.ndarray) -> float:
    """Share of the bad edges among the ``FLAG`` highest-scored edges."""
    top = np.argsort(-score, kind="stable")[: int(FLAG * len(score))]
    return float(bad[top].sum() / max(1, bad.sum()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--split", choices=("select", "report"), default="select")
    p.add_argument("--k", type=int, default=9)
    args = p.parse_args()
    data = Path(args.data)
    gold, splits = merged_coco(data, REPO / "runs" / "window-ensemble")
    coco = json.loads(gold.read_text())
    offsets = windows(args.k)
    t0 = time.perf_counter()
    r = read_all(Snapper.from_checkpoint(CHAMPION, device="cpu"), coco, data, set(splits[args.split]), offsets)
    seconds = time.perf_counter() - t0
    truth, reads, conf = r["truth"], r["reads"], r["conf"]
    median = np.median(reads, axis=0)
    weighted = (reads * conf).sum(0) / np.maximum(conf.sum(0), 1e-9)
    bad = (np.abs(reads[0] - truth) >= 3).ravel()
    lines = [f"# Window ensemble on the {args.split} split (experiments/window_ensemble.py)", "",
             "    .venv/bin/python experiments/window_ensemble.py --split " + args.split + f" --k {args.k}", "",
             f"Model `{CHAMPION.relative_to(REPO)}`; {len(truth)} boxes; K = {args.k} windows (the rough box + "
             f"{args.k - 1} shifted by up to {SHIFT:.0%} and scaled by {1 - SCALE:.2f}-{1 + SCALE:.2f}); "
             f"{seconds:.0f} s on this machine.", "",
             "| boxes | mIoU | IoU>0.9 | edge <1px | edge <3px |", "|---|---|---|---|---|",
             row("rough (paper jitter)", r["rough"], truth), row("one read (the rough box)", reads[0], truth),
             row(f"median of {args.k} reads", median, truth), row(f"confidence-weighted mean of {args.k}", weighted, truth),
             "", f"Which edges are 3 px or more off (one read: {bad.sum()} of {bad.size})? Share of them among the "
             f"{FLAG:.0%} of edges ranked first by:", "",
             "| ranking | caught |", "|---|---|",
             f"| 1 - confidence (one read) | {catch(1 - conf[0].ravel(), bad):.3f} |",
             f"| spread of the {args.k} reads (std, px) | {catch(reads.std(0).ravel(), bad):.3f} |",
             f"| 1 - mean confidence of the {args.k} reads | {catch(1 - conf.mean(0).ravel(), bad):.3f} |",
             f"| random | {FLAG:.3f} |", ""]
    out = REPO / "experiments" / "results" / "window-ensemble" / f"{args.split}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
