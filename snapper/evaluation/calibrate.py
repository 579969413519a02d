"""Calibrating a trained model (``snapper calibrate``): its raw per-edge confidence measured
on held-out boxes, the isotonic map fitted (:mod:`snapper.evaluation.calibration`) and stored
in a new checkpoint folder beside the same weights.

    res = calibrate_checkpoint("runs/a/best", select_shards, "runs/a/calibrated", report_shards)
    res.ece_of("report", "after")

Two held-out splits, as for model selection: the map is fitted on the *selection* shards, and
judged on the *report* shards, which nothing is fitted on (the selection split's "after" is
in-sample and flatters the fit). A calibration is fitted for one read-out: the jitter and
snap settings of the :class:`snapper.config.EvalConfig` (passes, flip, buffer ratio) are
recorded with it in ``calibration.json``.

The new folder holds ``model.pt`` (the weights, byte for byte), ``config.json`` (with
``model.calibration``; written last, so a folder with it is complete), ``calibration.json``
(knots, ECE before/after per split and size bucket, the settings) and ``reliability.png``
(before/after, on the report split when there is one).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from snapper.atomic import atomic_write_json
from snapper.config import EvalConfig
from snapper.errors import BadFileError, BadOptionError
from snapper.evaluation import plots as P
from snapper.evaluation.calibration import (
    BINS,
    Knots,
    calibrated_pairs,
    calibration_table,
    edge_pairs,
    fit_calibration,
    reliability_table,
)
from snapper.evaluation.evaluate import evaluate_checkpoint
from snapper.models.checkpoint import copy_checkpoint, read_config
from snapper.models.reference import resolve_model
from snapper.overrides import to_dict

CALIBRATION_JSON = "calibration.json"
RELIABILITY_PNG = "reliability.png"
SELECTION, REPORT = "selection", "report"
STAGE = "stage"  # "before" (raw) / "after" (calibrated)


@dataclass
class CalibrationResult:
    """What :func:`calibrate_checkpoint` made: the new checkpoint, its knots and the ECE table
    (``split``, ``stage``, ``size``, ``n_edges``, ``conf_mean``, ``hit_rate``, ``ece``)."""

    checkpoint: Path
    source: Path
    calibration: Knots
    confidence_px: float
    n_edges: int  # selection edges the map was fitted on
    ece: pd.DataFrame
    files: dict[str, str] = field(default_factory=dict)

    def ece_of(self, split: str, stage: str, size: str = "all") -> float:
        """The expected calibration error of one split, stage and size bucket (NaN if absent)."""
        rows = self.ece[(self.ece["split"] == split) & (self.ece[STAGE] == stage) & (self.ece["size"] == size)]
        return float(rows["ece"].iloc[0]) if len(rows) else float("nan")


def _raw_edges(checkpoint: Path, cfg: EvalConfig, shards: Sequence[str], confidence_px: float,
               split: str) -> pd.DataFrame:
    """The raw (uncalibrated) confidence and outcome of every edge of ``shards``."""
    df = evaluate_checkpoint(checkpoint, dataclasses.replace(cfg, shards=list(shards)), method="snapper",
                             calibrated=False)
    edges = edge_pairs(df, confidence_px)
    if not len(edges):
        raise BadFileError(f"the {split} shards gave no edge to calibrate on ({len(df)} boxes scored): "
                           f"{list(shards)[:3]}")
    return edges


def _check_splits(checkpoint: Path, out: Path, select: Sequence[str], report: Sequence[str]) -> None:
    """The refusals that must come before any work: calibrating into the model's own folder
    would replace its config, and a report split sharing shards with the fit is not held out."""
    if out.resolve() == checkpoint.resolve():
        raise BadOptionError(f"--out {out}: that is the model's own folder; give a new one")
    if not select:
        raise BadOptionError("no selection shards to fit the calibration on")
    shared = sorted(set(map(str, select)) & set(map(str, report)))
    if shared:
        raise BadOptionError(f"the report shards must be held out from the fit; {len(shared)} are also selection "
                             f"shards (e.g. {shared[0]})")


def calibrate_checkpoint(
    model_ref: str | os.PathLike[str],
    select_shards: Sequence[str],
    out_dir: str | os.PathLike[str],
    report_shards: Sequence[str] | None = None,
    cfg: EvalConfig | None = None,
    bins: int = BINS,
    plots: bool = True,
) -> CalibrationResult:
    """Fit the model's confidence calibration on ``select_shards`` (with any calibration it
    already has switched off) and write a calibrated copy to ``out_dir``; with
    ``report_shards``, also measure it there. ``cfg``: the jitter and read-out settings the
    calibration is for (its ``shards`` are ignored)."""
    cfg = cfg or EvalConfig()
    report = list(report_shards or [])
    src = resolve_model(model_ref)
    model_cfg, _ = read_config(src)
    out = Path(out_dir)
    _check_splits(src, out, select_shards, report)
    if model_cfg.head != "edges":
        raise BadOptionError(f"{model_ref}: a {model_cfg.head!r} model gives no per-edge confidence to calibrate")
    px = model_cfg.confidence_px
    selection = _raw_edges(src, cfg, select_shards, px, SELECTION)
    knots = fit_calibration(selection["conf"], selection["hit"])
    splits = {SELECTION: calibrated_pairs(selection, knots, STAGE)}
    if report:
        splits[REPORT] = calibrated_pairs(_raw_edges(src, cfg, report, px, REPORT), knots, STAGE)
    ece = pd.concat([calibration_table(e, by=(STAGE,), bins=bins).assign(split=s) for s, e in splits.items()],
                    ignore_index=True)[["split", STAGE, "size", "n_edges", "conf_mean", "hit_rate", "ece"]]
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    shown = REPORT if report else SELECTION
    if plots:
        rel = reliability_table(splits[shown], by=(STAGE,), bins=bins)
        title = f"{shown} split" + ("" if report else " (in-sample: the calibration was fitted here)")
        files["reliability"] = str(P.reliability_diagram(rel, out / RELIABILITY_PNG, curve=STAGE, title=title))
    record = {"source": str(model_ref), "source_checkpoint": str(src), "confidence_px": px, "bins": bins,
              "knots": {"x": knots[0], "y": knots[1]}, "n_edges": {s: int(len(e) // 2) for s, e in splits.items()},
              "shards": {SELECTION: list(select_shards), REPORT: report},
              "settings": {k: v for k, v in to_dict(cfg).items() if k != "shards"},
              "ece": ece.to_dict(orient="records")}
    files["calibration"] = str(atomic_write_json(out / CALIBRATION_JSON, record, indent=2))
    extra: dict[str, Any] = {"calibrated_from": str(model_ref)}
    checkpoint = copy_checkpoint(src, out, dataclasses.replace(model_cfg, calibration=knots), extra)
    return CalibrationResult(checkpoint, src, knots, px, len(selection), ece, files)
