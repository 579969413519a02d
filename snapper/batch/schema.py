"""What every stage of batch snapping agrees on: statuses, kept reasons, the per-annotation
result row, the output file names and the two errors.

Chunk snapping writes rows, merging reads them back from Parquet; keeping the columns and
their dtypes in one place is what lets a chunk written by one process (or an earlier run)
be merged by another.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from snapper.errors import BadFileError, SnapperError
from snapper.geometry import EDGE_NAMES

SNAPPED, KEPT = "snapped", "kept"
GUARD_COLLAPSED = "guard_collapsed"  # the snapped box collapsed or crossed (snapper.inference.guard): rough kept
# Kept reasons in the order they are checked (the first that applies is reported).
REASONS = (
    "missing_bbox", "malformed_bbox", "non_finite", "out_of_range", "crowd", "degenerate", "unknown_image",
    "outside_image", "too_small", "image_path_invalid", "outside_images_dir", "image_missing", "image_corrupt", "image_too_large",
    "image_size_mismatch", "snap_failed", "guard_collapsed",
)
CONF_COLS = [f"conf_{e}" for e in EDGE_NAMES]
ROUGH_COLS = ["rough_x", "rough_y", "rough_w", "rough_h"]
PRED_COLS = ["pred_x", "pred_y", "pred_w", "pred_h"]
ROW_COLUMNS = ["annotation_id", "image_id", "status", "reason", "detail", *ROUGH_COLS, *PRED_COLS, *CONF_COLS,
               "moved_px", "moved_frac", "iou_with_rough", "width", "height", "guarded_edges"]
# guarded_edges: the edges of a snapped box the broken-box guard gave back at their rough position
# ("left,bottom"; None: none), snapper.inference.guard
_TEXT_COLUMNS = ("status", "reason", "detail", "guarded_edges")
_FLOAT_COLUMNS = ROW_COLUMNS[5:-1]

OUTPUT_JSON = "snapped.json"
BOXES_PARQUET = "boxes.parquet"
SUMMARY_JSON = "summary.json"
REVIEW_CSV = "review.csv"
REVIEW_EDGES_CSV = "review_edges.csv"  # BatchConfig.review_budget: single edges, least likely right first
TABLE1_CSV = "table1.csv"
CHUNKS_DIR = "chunks"


class BatchInputError(BadFileError, ValueError):
    """The rough-annotation file cannot be used as a whole; the message names the file."""


class AccountingError(SnapperError, RuntimeError):
    """Chunk results do not account for every input annotation exactly once."""


def make_row(ann_id: int, image_id: int | None, reason: str | None, rough: list[float], detail: str | None = None,
             size: tuple[float, float] | None = None) -> dict[str, Any]:
    """One annotation's row: snapped when ``reason`` is None, else kept for that reason.
    Prediction columns are filled in by the caller for snapped boxes."""
    r: dict[str, Any] = {"annotation_id": ann_id, "image_id": image_id, "status": KEPT if reason else SNAPPED,
                         "reason": reason, "detail": detail}
    r.update(zip(ROUGH_COLS, rough))
    r["width"], r["height"] = size if size else (math.nan, math.nan)
    return r


def clean_text_columns(df: pd.DataFrame) -> pd.DataFrame:
    """None (not NaN) for missing status/reason/detail: Parquet gives back str columns with
    NaN holes, and the JSON output must say ``null``."""
    for c in _TEXT_COLUMNS:
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    return df


def rows_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a frame with fixed columns and dtypes (an empty chunk has the same schema)."""
    df = pd.DataFrame(rows, columns=ROW_COLUMNS)
    df["annotation_id"] = df["annotation_id"].astype("int64")
    df["image_id"] = pd.array(df["image_id"].tolist(), dtype="Int64")
    clean_text_columns(df)
    for c in _FLOAT_COLUMNS:
        df[c] = df[c].astype("float64")
    return df


def num(v: Any, digits: int = 4) -> float | None:
    """A number for the JSON outputs: rounded, None where it is missing or not finite."""
    return None if v is None or not np.isfinite(v) else round(float(v), digits)
