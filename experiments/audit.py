"""Dataset audit (issue 25 item 4): does ``snapper audit`` find the boxes of a dataset whose
edges were moved, and better than simple baselines?

Data: the three COCO folders of ``../shared/data``, split as ``coco_real.py`` splits them
(80% train, the 20% held out halved into *selection* and *report*). The model is the ``cpu``
preset Lite0 champion trained on the train split (``runs/adapt-champion/lite0/best``, made by
``experiments/adapt.py``): it never saw a selection or report image.

Corruption (:func:`snapper.evaluation.audit.corrupt_boxes`, seeded): 10% of the non-crowd
boxes get one or two edges moved in or out by U(3%, 15%) of the box's extent on that axis.
Each corrupted set is audited exactly as ``snapper audit`` does (:func:`snapper.batch.audit
.audit_dataset`, default batch settings on the CPU). A box is *positive* when it was
corrupted. Ranked population: every non-crowd annotation (crowd boxes are never corrupted and
batch-snap keeps them unsnapped); boxes batch-snap keeps for another reason (``too_small``) have
no score, rank last and, when corrupted, count as missed. Flag shares (5%, 10%) are shares of
the scored boxes, as ``--flag`` counts them.

Rankings: the audit score variants (``AuditConfig.score`` x ``min_px``), ``1 - IoU`` between
the annotated and the snapped box, and random (mean over 200 permutations). The design is chosen
on the *selection* split (seeds 0-9, mean AP) and reported on the *report* split (seeds 100-109);
the other variants' report numbers are listed for reference only.

    .venv/bin/python experiments/audit.py        # ~3 min on 2 CPU cores

Writes ``experiments/results/audit/report.md`` and ``results.json``; the audit folders (with
their contact sheets) go to ``runs/audit-exp/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt import merged_coco  # noqa: E402

from snapper.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from snapper.batch.audit import audit_dataset, audit_frame  # noqa: E402
from snapper.config import AUDIT_SCORES, AuditConfig, BatchConfig, SnapSettings  # noqa: E402
from snapper.evaluation import audit as A  # noqa: E402
from snapper.geometry import EDGE_NAMES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHAMPION = REPO / "runs" / "adapt-champion" / "lite0" / "best"
MIN_PX = (0.0, 1.0, 2.0, 3.0)
BOX_SCORES = ("max", "top2")
FLAGS = (0.05, 0.10)
SIZES = (("small", 0, 32 ** 2), ("medium", 32 ** 2, 96 ** 2), ("large", 96 ** 2, float("inf")))


def subset(coco: dict[str, Any], image_ids: list[int]) -> dict[str, Any]:
    keep = set(image_ids)
    return {**coco, "images": [im for im in coco["images"] if im["id"] in keep],
            "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]}


def audit_once(coco: dict[str, Any], data: Path, work: Path, seed: int, cfg: AuditConfig) -> dict[str, Any]:
    """Corrupt (seeded), audit, and return what the rankings are measured on."""
    bad, records = A.corrupt_boxes(coco, 0.10, seed=seed)
    work.mkdir(parents=True, exist_ok=True)
    ann = work / "annotations.json"
    atomic_write_json(ann, bad)
    t = time.perf_counter()
    res = audit_dataset(ann, data, work / "audit", CHAMPION, cfg)
    seconds = time.perf_counter() - t
    boxes = pd.read_parquet(work / "audit" / "boxes.parquet")
    crowd = {a["id"] for a in coco["annotations"] if a.get("iscrowd")}
    return {"boxes": boxes, "records": records, "crowd": crowd, "seconds": seconds, "frame": res.frame,
            "original": {a["id"]: a["bbox"] for a in coco["annotations"]}}


def rankings(run: dict[str, Any], cfg: AuditConfig) -> tuple[dict[str, np.ndarray], np.ndarray, pd.DataFrame]:
    """Every ranking's scores over the population (non-crowd boxes), the positives, and the
    audit frame of ``cfg``'s design with 10% flagged."""
    boxes = run["boxes"]
    pop = ~boxes["annotation_id"].isin(run["crowd"]).to_numpy()
    boxes = boxes[pop].reset_index(drop=True)
    positive = boxes["annotation_id"].isin({r["annotation_id"] for r in run["records"]}).to_numpy()
    out: dict[str, np.ndarray] = {}
    for score in AUDIT_SCORES:
        for m in MIN_PX:
            for how in BOX_SCORES:
                f = audit_frame(boxes, AuditConfig(score=score, min_px=m, box_score=how))
                out[label(score, m, how, cfg.batch.snap.flip)] = f["score"].to_numpy()
    base = audit_frame(boxes, AuditConfig(score=cfg.score, min_px=cfg.min_px, box_score=cfg.box_score, flag=0.10))
    out[iou_label(cfg.batch.snap.flip)] = 1.0 - base["iou"].to_numpy()
    return out, positive, base


def label(score: str, min_px: float, how: str, flip: bool) -> str:
    return f"{score} min_px={min_px:g} {how}" + (" flip" if flip else "")


def iou_label(flip: bool) -> str:
    return "1 - IoU" + (" (flip)" if flip else "")


def design(name: str) -> dict[str, Any]:
    """A ranking's label back as AuditConfig fields (+ flip)."""
    score, rest = name.split(" min_px=")
    parts = rest.split()
    return {"score": score, "min_px": float(parts[0]), "box_score": parts[1], "flip": parts[-1] == "flip"}


def measure(scores: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    return {"ap": A.average_precision(scores, positive),
            **{f"recall@{int(f * 100)}%": A.recall_at(scores, positive, f) for f in FLAGS}}


def random_baseline(positive: np.ndarray, scored: np.ndarray, seed: int) -> dict[str, float]:
    """The mean over 200 random orders of the scored boxes (unscored ones still rank last)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(200):
        s = np.full(len(positive), np.nan)
        s[scored] = rng.random(int(scored.sum()))
        rows.append(measure(s, positive))
    return pd.DataFrame(rows).mean().to_dict()


def corrections(run: dict[str, Any], frame: pd.DataFrame, seed: int) -> list[dict[str, Any]]:
    """One row per corrupted edge: its box size, how far the annotation was moved, how far the
    proposed (snapped) edge is from the original one, and the share of the move it undid."""
    f = frame.set_index("annotation_id")
    rows = []
    for r in run["records"]:
        x, y, w, h = run["original"][r["annotation_id"]]
        orig = dict(zip(EDGE_NAMES, (x, y, x + w, y + h)))
        row = f.loc[r["annotation_id"]]
        for e, move in r["edges"].items():
            snapped = row["status"] == "snapped"
            undone = (row[f"proposed_{e}"] - row[f"annotated_{e}"]) / (orig[e] - row[f"annotated_{e}"])
            rows.append({"seed": seed, "annotation_id": r["annotation_id"], "edge": e, "area": w * h,
                         "moved_px": abs(move), "undone": undone if snapped else np.nan,
                         "moved_frac": r["frac"][e], "snapped": snapped, "flagged10": bool(row["flagged"]),
                         "proposed_err_px": abs(row[f"proposed_{e}"] - orig[e]) if snapped else np.nan})
    return rows


def clean_edges(run: dict[str, Any], frame: pd.DataFrame) -> np.ndarray:
    """|proposed - annotated| of every edge of the snapped boxes that were not corrupted."""
    bad = {r["annotation_id"] for r in run["records"]}
    keep = (frame["status"] == "snapped") & ~frame["annotation_id"].isin(bad) & ~frame["annotation_id"].isin(run["crowd"])
    return frame.loc[keep, [f"delta_px_{e}" for e in EDGE_NAMES]].to_numpy().reshape(-1)


def run_split(name: str, coco: dict[str, Any], data: Path, seeds: list[int], cfg: AuditConfig) -> dict[str, Any]:
    per_seed, corr, clean, info = [], [], [], []
    for seed in seeds:
        run = audit_once(coco, data, REPO / "runs" / "audit-exp" / name / f"seed{seed}", seed, cfg)
        scores, positive, frame = rankings(run, cfg)
        scored = np.isfinite(scores[iou_label(cfg.batch.snap.flip)])
        n_scored = int(scored.sum())
        row = {k: measure(v, positive) for k, v in scores.items()}
        row["random" + (" (flip)" if cfg.batch.snap.flip else "")] = random_baseline(positive, scored, seed)
        per_seed.append(row)
        corr += corrections(run, frame, seed)
        clean.append(clean_edges(run, frame))
        info.append({"seed": seed, "boxes": len(positive), "scored": n_scored, "corrupted": int(positive.sum()),
                     "corrupted_unscored": int((positive & ~scored).sum()),
                     "crowd": len(run["crowd"]), "seconds": round(run["seconds"], 1),
                     "boxes_per_s": round(len(run["boxes"]) / run["seconds"], 1)})
        chosen = label(cfg.score, cfg.min_px, cfg.box_score, cfg.batch.snap.flip)
        print(f"{name} seed {seed}: AP {row[chosen]['ap']:.3f}  1-IoU {row[iou_label(cfg.batch.snap.flip)]['ap']:.3f}"
              f"  ({info[-1]['seconds']} s)", flush=True)
    return {"per_seed": per_seed, "corrections": corr, "clean": np.concatenate(clean).tolist(), "info": info}


def table(per_seed: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for method in per_seed[0]:
        df = pd.DataFrame([s[method] for s in per_seed])
        rows.append({"ranking": method, **{f"{k} mean": df[k].mean() for k in df},
                     **{f"{k} std": df[k].std(ddof=1) for k in df}, "ap seed0": df["ap"].iloc[0]})
    return pd.DataFrame(rows)


def _md(df: pd.DataFrame) -> str:
    cols = ["ranking", "ap mean", "ap std", "recall@5% mean", "recall@10% mean", "ap seed0"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df[cols].itertuples(index=False):
        lines.append("| " + " | ".join(v if isinstance(v, str) else f"{v:.3f}" for v in r) + " |")
    return "\n".join(lines)


def correction_md(corr: pd.DataFrame, clean: np.ndarray) -> str:
    lines = ["| edges | n | proposed within 1 px of original | within 3 px | annotation (corrupted) within 3 px |",
             "|---|---|---|---|---|"]
    for label, lo, hi in (("all", 0, float("inf")), *SIZES):
        c = corr[(corr["area"] >= lo) & (corr["area"] < hi)]
        s = c[c["snapped"]]
        lines.append(f"| corrupted, {label} boxes | {len(c)} ({len(c) - len(s)} not snapped) | "
                     f"{(s['proposed_err_px'] < 1).mean():.3f} | {(s['proposed_err_px'] < 3).mean():.3f} | "
                     f"{(c['moved_px'] < 3).mean():.3f} |")
    lines.append(f"| clean edges: proposed within 1 / 3 px of the annotation | {len(clean)} | "
                 f"{(clean < 1).mean():.3f} | {(clean < 3).mean():.3f} | 1.000 |")
    return "\n".join(lines)


def found_by_size(corr: pd.DataFrame) -> str:
    """Share of corrupted boxes among the 10% flagged by the chosen design, by box size."""
    boxes = corr.drop_duplicates(["seed", "annotation_id"])
    lines = ["| corrupted boxes | n (all seeds) | among the 10% flagged |", "|---|---|---|"]
    for label, lo, hi in (("all", 0, float("inf")), *SIZES):
        b = boxes[(boxes["area"] >= lo) & (boxes["area"] < hi)]
        lines.append(f"| {label} | {len(b)} | {b['flagged10'].mean():.3f} |")
    return "\n".join(lines)


def batch_config(flip: bool) -> BatchConfig:
    return BatchConfig(workers=1, snap=SnapSettings(device="cpu", batch_size=128, flip=flip))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--select-seeds", type=int, default=5, help="corruption seeds on the selection split (0..N-1)")
    p.add_argument("--seeds", type=int, default=10, help="corruption seeds on the report split (100..)")
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "audit"))
    args = p.parse_args()
    data, out = Path(args.data), Path(args.out)
    gold, splits = merged_coco(data, REPO / "runs" / "audit-exp")
    coco = json.loads(gold.read_text())
    t0 = time.time()
    sel_seeds = list(range(args.select_seeds))
    sel = [run_split(f"select-flip{int(f)}", subset(coco, splits["select"]), data, sel_seeds,
                     AuditConfig(sheet_max=0, batch=batch_config(f))) for f in (False, True)]
    sel_table = pd.concat([table(s["per_seed"]) for s in sel], ignore_index=True)
    audit_rows = sel_table[sel_table["ranking"].str.contains("min_px=")]
    best = audit_rows.sort_values("ap mean", ascending=False).iloc[0]["ranking"]
    d = design(best)
    cfg = AuditConfig(score=d["score"], min_px=d["min_px"], box_score=d["box_score"], sheet_max=24,
                      batch=batch_config(d["flip"]))
    rep = run_split("report", subset(coco, splits["report"]), data, list(range(100, 100 + args.seeds)), cfg)
    rep_table = table(rep["per_seed"])
    write_report(out, sel, sel_table, rep, rep_table, best, cfg, time.time() - t0)


def write_report(out: Path, sel: list[dict[str, Any]], sel_table: pd.DataFrame, rep: dict[str, Any],
                 rep_table: pd.DataFrame, best: str, cfg: AuditConfig, seconds: float) -> None:
    corr = pd.DataFrame(rep["corrections"])
    info = pd.DataFrame(rep["info"])
    flip = cfg.batch.snap.flip
    base_iou, base_rnd = iou_label(flip), "random" + (" (flip)" if flip else "")
    head = rep_table.set_index("ranking")
    chosen, iou, rnd = head.loc[best], head.loc[base_iou], head.loc[base_rnd]
    main_rows = rep_table[rep_table["ranking"].isin([best, base_iou, base_rnd])]
    others = rep_table[~rep_table["ranking"].isin([best, base_iou, base_rnd])]
    n_sel = len(sel[0]["info"])
    undone = corr["undone"].dropna().quantile([0.25, 0.5, 0.75]).to_numpy()
    sel_top = pd.concat([sel_table[sel_table["ranking"].str.contains("min_px=")].sort_values("ap mean", ascending=False)
                         .head(12), sel_table[~sel_table["ranking"].str.contains("min_px=")]])
    md = [
        "# Dataset audit: finding corrupted boxes (experiments/audit.py)", "",
        "```", ".venv/bin/python experiments/audit.py", "```", "",
        f"Model `runs/adapt-champion/lite0/best` (cpu-preset Lite0, 500 steps, trained on coco_real.py's train "
        f"split of the three COCO folders of `../shared/data`). Held-out images: coco_real.py's report split "
        f"({int(info['boxes'].iloc[0])} non-crowd boxes; {int(info['crowd'].iloc[0])} crowd boxes, never corrupted "
        f"and kept unsnapped by batch-snap, are left out of the ranking). 10% of the non-crowd boxes corrupted "
        f"(`corrupt_boxes`: one or two edges moved in or out by U(3%, 15%) of the box's extent on that axis), "
        f"{len(info)} corruption seeds (100-{99 + len(info)}). Each corrupted set audited as `snapper audit` "
        f"does (`snapper.batch.audit.audit_dataset`, CPU). The design was chosen on the selection split "
        f"({n_sel} seeds, 0-{n_sel - 1}, with and without `--flip`), never on the report numbers. Total wall time "
        f"{seconds / 60:.1f} min on 2 CPU cores; audit throughput {info['boxes_per_s'].median():.0f} boxes/s "
        "(median per run, model load included).", "",
        f"**Result (report split): audit AP {chosen['ap mean']:.3f} +- {chosen['ap std']:.3f} (mean +- std over "
        f"seeds; seed 100 alone {chosen['ap seed0']:.3f}) vs 1 - IoU {iou['ap mean']:.3f} and random "
        f"{rnd['ap mean']:.3f}; recall at 5% / 10% flagged {chosen['recall@5% mean']:.3f} / "
        f"{chosen['recall@10% mean']:.3f} (1 - IoU {iou['recall@5% mean']:.3f} / {iou['recall@10% mean']:.3f}, "
        f"random {rnd['recall@5% mean']:.3f} / {rnd['recall@10% mean']:.3f}).** The issue's bar, AP >= 0.8, is "
        f"{'met' if chosen['ap mean'] >= 0.8 else '**not met**'}; the audit "
        f"{'beats' if chosen['ap mean'] > iou['ap mean'] else 'does not beat'} the 1 - IoU baseline.", "",
        f"Chosen design: `{best}` = `AuditConfig(score={cfg.score!r}, min_px={cfg.min_px:g}, "
        f"box_score={cfg.box_score!r})`{' with `--flip` (batch.snap.flip)' if flip else ''}: the best mean AP on "
        "the selection split. Both baselines rank the same snapped boxes as the audit.", "",
        "## Report split", "", _md(main_rows), "",
        "Counting: with 10% of the boxes corrupted, flagging 5% can find at most about half of them (recall@5% "
        "<= ~0.5 by construction). AP counts every corrupted box; one batch-snap keeps unsnapped (too small) has "
        f"no score, ranks last and counts as missed: {int(info['corrupted_unscored'].sum())} of "
        f"{int(info['corrupted'].sum())} corrupted boxes over all seeds.", "",
        "### Found, by box size (chosen design, all report seeds)", "", found_by_size(corr), "",
        "### Proposed corrections (every corrupted edge, all report seeds)", "",
        correction_md(corr, np.asarray(rep["clean"])), "",
        "Size buckets by the original box's area (COCO: small < 32^2, large >= 96^2 px). Last column: the share "
        "of corrupted edges moved by less than 3 px (on small boxes 3-15% of the extent is often under 3 px: "
        "hardly wrong, and below what this model resolves). Last row: how far the model puts the edges of the "
        "boxes that were not corrupted; that spread is the noise a corruption must stand out of.", "",
        "### Other variants on the report split (for reference; not used to choose)", "", _md(others), "",
        "## Selection split (where the design was chosen): the 12 best variants and the baselines", "",
        _md(sel_top), "",
        "## Why not higher, and what else was tried", "",
        "The audit can only be as good as the model's edges. On the boxes that were not corrupted, this "
        "500-step CPU model puts an edge more than 3 px away from the COCO annotation for about a quarter of "
        f"the edges (table above, last row), and on a corrupted edge it undoes only part of the move (share "
        f"of the move undone, report split: median {undone[1]:.2f}, quartiles {undone[0]:.2f} / {undone[2]:.2f}; "
        "1 = back to the original edge, 0 = stays on the annotation): a 3-15% move is often inside the "
        "model's own noise, on small boxes below a pixel or two. The design choice moves AP by a few points "
        "at most (selection table); the conf-weighted score and `1 - IoU` rank nearly alike.", "",
        "Tried by hand on the selection split only (throwaway scripts, not reproduced by this command, not "
        "adopted): snapping from 6 jittered copies of each annotated box and comparing the annotation with "
        "the median of those snaps (less anchored to the annotation): AP 0.19 on seed 0 against "
        "0.29 for the anchored snap; scoring by the model's edge distribution itself (log ratio of its mass "
        "within 1 px of its peak and of the annotated edge, top two edges; needs the logits, which batch-snap "
        "does not keep): 0.343 against 0.325 on seeds 0-4, within the seed spread. A better model (more "
        "training, the GPU presets) is what should move these numbers.", "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", "\n".join(md))
    res = {"chosen": best, "config": {"score": cfg.score, "min_px": cfg.min_px, "box_score": cfg.box_score,
                                      "flip": flip},
           "report": json.loads(rep_table.to_json(orient="records")),
           "selection": json.loads(sel_table.to_json(orient="records")), "report_runs": rep["info"],
           "selection_runs": [r for s in sel for r in s["info"]]}
    atomic_write_json(out / "results.json", res, indent=1)
    print("\n".join(md))


if __name__ == "__main__":
    main()
