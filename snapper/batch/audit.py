"""Dataset audit (``snapper audit``, flow ``audit-dataset``): snap every box of a dataset believed
correct and rank the boxes by how likely an annotated edge is misplaced.

The output folder *is* a batch-snap output folder (:func:`snapper.batch.batch_snap` with the
annotated boxes as the rough ones: ``snapped.json``, ``boxes.parquet``, ``summary.json``, every
bad image or box kept with its reason), plus:

* ``audit.parquet``: one row per input annotation, in input order (nothing dropped):
  ``annotation_id, image_id, file_name, status, reason``, per edge ``annotated_<e>``,
  ``proposed_<e>`` (px, x for left/right, y for top/bottom), ``delta_px_<e>`` (|proposed -
  annotated|), ``delta_frac_<e>`` (over the annotated extent), ``conf_<e>``, ``suspicion_<e>``,
  then ``iou`` (annotated vs proposed box), ``score`` (the box's largest edge suspicion),
  ``rank`` (1 = most suspect; null when not scored), ``flagged``, ``suspect_edges``
  (``"left,top"``). Kept (unsnapped) boxes have NaN numbers and no rank.
* ``review.csv``: **replaced** by the flagged boxes, most suspect first, in batch-snap's
  review columns (:data:`snapper.batch.merge.REVIEW_COLUMNS`), ``review`` naming the suspect
  edges (``audit:left;audit:top``): the list a reviewer (``review push``) gets.
* ``audit_top.html``: the contact sheet of the top suspects (``AuditConfig.sheet_max``).
* ``audit.json``: counts (scored, kept per reason, flagged), the score at the cut, settings.

Scoring: :mod:`snapper.evaluation.audit`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from snapper.atomic import atomic_write_csv, atomic_write_json, atomic_write_parquet
from snapper.batch.image_work import safe_image_path
from snapper.batch.merge import REVIEW_COLUMNS
from snapper.batch.pipeline import BatchResult, batch_snap
from snapper.batch.schema import BOXES_PARQUET, CONF_COLS, PRED_COLS, REVIEW_CSV, ROUGH_COLS, SNAPPED
from snapper.config import AuditConfig
from snapper.evaluation import audit as A
from snapper.evaluation.audit_sheet import Suspect, write_sheet
from snapper.geometry import EDGE_NAMES, paired_iou, xywh_to_xyxy
from snapper.models.reference import DEFAULT_MODEL
from snapper.overrides import to_dict

AUDIT_PARQUET = "audit.parquet"
AUDIT_JSON = "audit.json"
AUDIT_SHEET = "audit_top.html"
REVIEW_PREFIX = "audit:"  # review.csv: "audit:left;audit:top"


@dataclass
class AuditResult:
    out_dir: Path
    batch: BatchResult
    frame: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


def _cols(prefix: str) -> list[str]:
    return [f"{prefix}_{e}" for e in EDGE_NAMES]


def audit_frame(boxes: pd.DataFrame, cfg: AuditConfig) -> pd.DataFrame:
    """The audit table of a batch run's ``boxes.parquet`` rows (same order): per-edge numbers,
    suspicion, box score, rank and the flagged top ``cfg.flag``."""
    snapped = (boxes["status"] == SNAPPED).to_numpy()
    ann = xywh_to_xyxy(boxes[ROUGH_COLS].to_numpy(np.float64))
    prop = xywh_to_xyxy(boxes[PRED_COLS].to_numpy(np.float64))
    prop[~snapped] = np.nan
    conf = boxes[CONF_COLS].to_numpy(np.float64, copy=True)
    conf[~snapped] = np.nan
    px, frac = A.edge_deltas(ann, prop)
    susp = A.edge_suspicion(px, frac, np.where(np.isnan(conf) & snapped[:, None], 1.0, conf), cfg.score, cfg.min_px)
    score = A.box_scores(susp, cfg.box_score)
    rank = A.rank(score)
    scored = np.isfinite(score)
    k = A.flag_count(cfg.flag, int(scored.sum()))
    flagged = scored & (rank <= k) & (np.nan_to_num(score) > 0)  # a box with nothing suspect is never flagged
    edges = A.suspect_edges(susp, cfg.suspect_ratio)
    out = pd.DataFrame({"annotation_id": boxes["annotation_id"].to_numpy(), "image_id": boxes["image_id"].array,
                        "file_name": boxes["file_name"].to_numpy() if "file_name" in boxes else None,
                        "status": boxes["status"].to_numpy(), "reason": boxes["reason"].to_numpy()})
    for name, arr in (("annotated", np.where(np.isfinite(ann), ann, np.nan)), ("proposed", prop), ("delta_px", px),
                      ("delta_frac", frac), ("conf", conf), ("suspicion", susp)):
        for c, col in zip(_cols(name), arr.T):
            out[c] = col
    iou = np.full(len(out), np.nan)
    iou[snapped] = paired_iou(ann[snapped], prop[snapped])
    out["iou"] = iou
    out["score"] = score
    out["rank"] = pd.array([int(r) if s else None for r, s in zip(rank, scored)], dtype="Int64")
    out["flagged"] = flagged
    out["suspect_edges"] = [",".join(e) if f else "" for e, f in zip(edges, flagged)]
    return out


def review_rows(frame: pd.DataFrame, boxes: pd.DataFrame) -> pd.DataFrame:
    """The flagged boxes, most suspect first, as batch-snap's ``review.csv`` rows."""
    top = frame[frame["flagged"].to_numpy()].sort_values("rank")
    moved = boxes.set_index("annotation_id")["moved_frac"]
    rows = top[["annotation_id", "image_id", "file_name", "status", "reason"]].copy()
    rows["review"] = [";".join(REVIEW_PREFIX + e for e in s.split(",") if e) for s in top["suspect_edges"]]
    for c in CONF_COLS:
        rows[c] = top[c].to_numpy()
    rows["moved_frac"] = moved.loc[top["annotation_id"]].to_numpy()
    return rows[REVIEW_COLUMNS]


def suspects(frame: pd.DataFrame, images_dir: str | os.PathLike[str], limit: int) -> list[Suspect]:
    """The first ``limit`` flagged boxes as contact-sheet entries."""
    top = frame[frame["flagged"].to_numpy()].sort_values("rank").head(limit)
    return [Suspect(rank=int(r["rank"]), annotation_id=int(r["annotation_id"]), file_name=str(r["file_name"]),
                    image_path=safe_image_path(str(images_dir), r["file_name"]),
                    annotated=[float(r[c]) for c in _cols("annotated")],
                    proposed=[float(r[c]) for c in _cols("proposed")], score=float(r["score"]),
                    delta_px=[float(r[c]) for c in _cols("delta_px")], confidence=[float(r[c]) for c in CONF_COLS],
                    suspect=[e for e in str(r["suspect_edges"]).split(",") if e])
            for _, r in top.iterrows()]


def audit_summary(frame: pd.DataFrame, cfg: AuditConfig, batch: BatchResult) -> dict[str, Any]:
    scored = frame["score"].notna()
    flagged = frame[frame["flagged"]]
    reasons = frame.loc[~scored, "reason"].fillna("unscored").value_counts()
    return {"input": batch.summary.get("input"), "out_dir": str(batch.out_dir), "model": batch.summary.get("model"),
            "n_annotations": len(frame), "n_scored": int(scored.sum()), "n_unscored": int((~scored).sum()),
            "unscored_reasons": {str(k): int(v) for k, v in reasons.items()},
            "n_flagged": len(flagged), "flag": cfg.flag,
            "score_at_cut": float(flagged["score"].min()) if len(flagged) else None,
            "suspect_edges": {e: int(flagged["suspect_edges"].str.contains(e).sum()) for e in EDGE_NAMES},
            "files": {"audit": AUDIT_PARQUET, "review": REVIEW_CSV,
                      "sheet": AUDIT_SHEET if cfg.sheet_max else None},
            "config": to_dict(cfg)}


def write_audit(batch: BatchResult, images_dir: str | os.PathLike[str], cfg: AuditConfig) -> AuditResult:
    """The audit outputs of a finished batch run in ``batch.out_dir`` (``review.csv`` replaced)."""
    out = batch.out_dir
    boxes = pd.read_parquet(out / BOXES_PARQUET)
    frame = audit_frame(boxes, cfg)
    summary = audit_summary(frame, cfg, batch)
    atomic_write_parquet(frame, out / AUDIT_PARQUET)
    atomic_write_csv(review_rows(frame, boxes), out / REVIEW_CSV)
    if cfg.sheet_max:
        write_sheet(suspects(frame, images_dir, cfg.sheet_max), out / AUDIT_SHEET,
                    f"audit of {Path(str(summary['input'])).name}: top {min(cfg.sheet_max, len(frame[frame['flagged']]))} "
                    f"of {summary['n_flagged']} flagged ({summary['n_scored']} boxes scored)")
    else:
        (out / AUDIT_SHEET).unlink(missing_ok=True)
    atomic_write_json(out / AUDIT_JSON, json.loads(json.dumps(summary, default=str)), indent=2)
    return AuditResult(out, batch, frame, summary)


def audit_dataset(ann_file: str | os.PathLike[str], images_dir: str | os.PathLike[str],
                  out_dir: str | os.PathLike[str], model_ref: str | os.PathLike[str] = DEFAULT_MODEL,
                  cfg: AuditConfig | None = None) -> AuditResult:
    """Snap every annotated box (:func:`snapper.batch.batch_snap`, bad input refused in one line
    or kept per box with its reason), then score, rank and write the audit outputs."""
    cfg = cfg or AuditConfig()
    batch = batch_snap(ann_file, images_dir, out_dir, model_ref, cfg.batch)
    return write_audit(batch, images_dir, cfg)
