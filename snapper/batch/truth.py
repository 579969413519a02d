"""The paper's Table 1 for a batch run whose true boxes are known (same annotation ids):
how good the input was and how good the output is, on the same boxes."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from snapper.batch.rough import finite_box, parse_rough
from snapper.batch.schema import CONF_COLS, PRED_COLS, ROUGH_COLS, SNAPPED
from snapper.evaluation.metrics import box_table, summarize
from snapper.geometry import xywh_to_xyxy


def _true_boxes(truth_file: str | os.PathLike[str]) -> tuple[dict[int, np.ndarray], int]:
    """Usable true boxes by annotation id (finite, positive size, not crowd), and how many
    were not usable."""
    truth = parse_rough(truth_file)
    true_by_id: dict[int, np.ndarray] = {}
    n_unusable = 0
    for a in truth.annotations:
        reason, b = finite_box(a.get("bbox"))
        if reason or a.get("iscrowd") not in (None, 0, False) or b[2] <= 0 or b[3] <= 0:
            n_unusable += 1
            continue
        true_by_id[a["id"]] = b
    return true_by_id, n_unusable


def truth_table(df: pd.DataFrame, truth_file: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Table 1 for the input (rough, clipped) and output boxes of the snapped annotations that
    have a usable true box (same annotation id, finite, positive size, not crowd)."""
    true_by_id, n_unusable = _true_boxes(truth_file)
    s = df[df["status"] == SNAPPED]
    has = s["annotation_id"].isin(true_by_id.keys()).to_numpy()
    m = s[has]
    counts = {"n_evaluated": int(len(m)), "n_snapped_without_truth": int((~has).sum()),
              "n_truth_unusable": n_unusable}
    if not len(m):
        return pd.DataFrame(), counts
    true = xywh_to_xyxy(np.stack([true_by_id[i] for i in m["annotation_id"]]))
    w, h = m["width"].to_numpy(), m["height"].to_numpy()
    rough = xywh_to_xyxy(m[ROUGH_COLS].to_numpy(dtype=np.float64))
    rough[:, [0, 2]] = rough[:, [0, 2]].clip(0, w[:, None])
    rough[:, [1, 3]] = rough[:, [1, 3]].clip(0, h[:, None])
    pred = xywh_to_xyxy(m[PRED_COLS].to_numpy(dtype=np.float64))
    common = dict(image_id=m["image_id"].to_numpy(), annotation_id=m["annotation_id"].to_numpy(), rough_xyxy=rough)
    tables = [box_table(rough, true, method="input", **common),
              box_table(pred, true, method="snapper", confidence=m[CONF_COLS].to_numpy(), **common)]
    return summarize(pd.concat(tables, ignore_index=True)), counts
