"""Calibrating a trained model (``snapper calibrate``): its raw per-edge confidence measured
on held-out boxes, a monotone map fitted (:mod:`snapper.evaluation.calibration`: beta
calibration by default) and stored in a new checkpoint folder beside the same weights.

    res = calibrate_checkpoint("runs/a/best", select_shards, "runs/a/calibrated", report_shards)
    res.ece_of("report", "after")

Two held-out splits, as for model selection: the map is fitted on the *selection* shards, and
judged on the *report* shards, which nothing is fitted on (the selection split's "after" is
in-sample and flatters the fit). A calibration is fitted for one read-out: the jitter and
snap settings of the :class:`snapper.config.EvalConfig` (passes, flip, buffer ratio) are
recorded with it in ``calibration.json``.

Each split is scored over ``draws`` jitter draws (seeds ``cfg.seed``, ``cfg.seed + 1``, ...):
a rough box is one random draw of the annotator's error, so several draws per held-out box
give the fit many more (confidence, outcome) pairs for the same boxes, and the ECE measured
on the report split much less binning noise (one draw of ~1,300 edges cannot show an ECE
below ~0.02 even for a perfectly calibrated confidence). The boxes themselves are few: every
ECE comes with a bootstrap interval over images and the floor a perfect calibration would
show (:func:`snapper.evaluation.calibration.calibration_table`), and the share of bad edges
that reviewing the least confident 10% first catches is reported before and after (a single
monotone map keeps the order of edges, so it stays the same).

The new folder holds ``model.pt`` (the weights, byte for byte), ``config.json`` (with
``model.calibration``; written last, so a folder with it is complete), ``calibration.json``
(knots, coefficients, ECE before/after per split and size bucket, review catch, the settings)
and ``reliability.png`` (before/after, on the report split when there is one, in bins of
equal numbers of edges).
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
    DEFAULT_METHOD,
    METHODS,
    Knots,
    calibrated_pairs,
    calibration_table,
    edge_pairs,
    fit_map,
    reliability_table,
    review_catch,
)
from snapper.evaluation.evaluate import evaluate_checkpoint
from snapper.models.checkpoint import copy_checkpoint, read_config
from snapper.models.reference import resolve_model
from snapper.overrides import to_dict

CALIBRATION_JSON = "calibration.json"
RELIABILITY_PNG = "reliability.png"
SELECTION, REPORT = "selection", "report"
STAGE = "stage"  # "before" (raw) / "after" (calibrated)
DRAWS = 10  # jitter draws per held-out box (selection CV on COCO: most of the gain of 40 draws)
N_BOOT = 500  # bootstrap resamples of each ECE interval
REVIEW_SHARE = 0.1  # the least confident share of edges reviewed first ...
REVIEW_BAD_PX = 3.0  # ... and the edges it should catch: this far off or more


@dataclass
class CalibrationResult:
    """What :func:`calibrate_checkpoint` made: the new checkpoint, its knots, the ECE table
    (``split``, ``stage``, ``size``, ``n_edges``, ``conf_mean``, ``hit_rate``, ``ece`` and, as
    :func:`snapper.evaluation.calibration.calibration_table` gives them, its first-draw value,
    interval and floor) and the review table (``split``, ``stage``, ``draws``, ``n_edges``,
    ``n_bad``, ``caught_pct``)."""

    checkpoint: Path
    source: Path
    calibration: Knots
    confidence_px: float
    n_edges: int  # selection edges the map was fitted on (all draws)
    ece: pd.DataFrame
    method: str = DEFAULT_METHOD
    params: dict[str, float] = field(default_factory=dict)
    draws: int = 1
    review: pd.DataFrame = field(default_factory=pd.DataFrame)
    files: dict[str, str] = field(default_factory=dict)

    def _row(self, split: str, stage: str, size: str) -> pd.DataFrame:
        return self.ece[(self.ece["split"] == split) & (self.ece[STAGE] == stage) & (self.ece["size"] == size)]

    def ece_of(self, split: str, stage: str, size: str = "all", column: str = "ece") -> float:
        """The expected calibration error of one split, stage and size bucket (NaN if absent);
        ``column`` another of the ECE table's (``ece_lo``, ``ece_hi``, ``ece_floor``, ...)."""
        rows = self._row(split, stage, size)
        return float(rows[column].iloc[0]) if len(rows) and column in rows else float("nan")

    def caught_of(self, split: str, stage: str, draws: str = "all") -> float:
        """Percent of the bad edges that reviewing the least confident 10% catches (NaN if absent)."""
        r = self.review
        rows = r[(r["split"] == split) & (r[STAGE] == stage) & (r["draws"] == draws)] if len(r) else r
        return float(rows["caught_pct"].iloc[0]) if len(rows) else float("nan")


def _raw_edges(checkpoint: Path, cfg: EvalConfig, shards: Sequence[str], confidence_px: float,
               split: str, draws: int) -> pd.DataFrame:
    """The raw (uncalibrated) confidence and outcome of every edge of ``shards``, per jitter
    draw (``draw`` 0, 1, ...: seeds ``cfg.seed + draw``)."""
    frames = []
    for draw in range(draws):
        df = evaluate_checkpoint(checkpoint, dataclasses.replace(cfg, shards=list(shards), seed=cfg.seed + draw),
                                 method="snapper", calibrated=False)
        frames.append(edge_pairs(df, confidence_px).assign(draw=draw))
        if not len(frames[-1]):
            raise BadFileError(f"the {split} shards gave no edge to calibrate on ({len(df)} boxes scored): "
                               f"{list(shards)[:3]}")
    return pd.concat(frames, ignore_index=True)


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


def _review_table(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Review catch per split and stage, over all draws and over the first draw alone."""
    rows = []
    for split, edges in splits.items():
        for stage, by_stage in edges.groupby(STAGE, sort=False):
            for draws, g in (("all", by_stage), ("first", by_stage[by_stage["draw"] == 0])):
                bad = g["dev"].to_numpy() >= REVIEW_BAD_PX
                rows.append({"split": split, STAGE: stage, "draws": draws, "flag_pct": 100 * REVIEW_SHARE,
                             "n_edges": len(g), "n_bad": int(bad.sum()),
                             "caught_pct": review_catch(g["conf"], bad, REVIEW_SHARE)})
    return pd.DataFrame(rows)


def calibrate_checkpoint(
    model_ref: str | os.PathLike[str],
    select_shards: Sequence[str],
    out_dir: str | os.PathLike[str],
    report_shards: Sequence[str] | None = None,
    cfg: EvalConfig | None = None,
    bins: int = BINS,
    plots: bool = True,
    method: str = DEFAULT_METHOD,
    draws: int = DRAWS,
    n_boot: int = N_BOOT,
) -> CalibrationResult:
    """Fit the model's confidence calibration (``method``, one of
    :data:`snapper.evaluation.calibration.METHODS`) on ``select_shards`` over ``draws`` jitter
    draws (with any calibration it already has switched off) and write a calibrated copy to
    ``out_dir``; with ``report_shards``, also measure it there. ``cfg``: the jitter and read-out
    settings the calibration is for (its ``shards`` are ignored). ``n_boot``: resamples of each
    ECE's interval (0: none)."""
    cfg = cfg or EvalConfig()
    if method not in METHODS:
        raise BadOptionError(f"calibration method {method!r}: one of {', '.join(METHODS)}")
    if draws < 1:
        raise BadOptionError(f"draws {draws}: at least 1 jitter draw per box")
    report = list(report_shards or [])
    src = resolve_model(model_ref)
    model_cfg, _ = read_config(src)
    out = Path(out_dir)
    _check_splits(src, out, select_shards, report)
    if model_cfg.head != "edges":
        raise BadOptionError(f"{model_ref}: a {model_cfg.head!r} model gives no per-edge confidence to calibrate")
    px = model_cfg.confidence_px
    selection = _raw_edges(src, cfg, select_shards, px, SELECTION, draws)
    try:
        knots, params = fit_map(selection["conf"], selection["hit"], method)
    except ValueError as e:
        raise BadFileError(f"the selection shards: {e}") from None
    splits = {SELECTION: calibrated_pairs(selection, knots, STAGE)}
    if report:
        splits[REPORT] = calibrated_pairs(_raw_edges(src, cfg, report, px, REPORT, draws), knots, STAGE)
    ece = pd.concat([calibration_table(e, by=(STAGE,), bins=bins, n_boot=n_boot).assign(split=s)
                     for s, e in splits.items()], ignore_index=True)
    ece = ece[["split", *[c for c in ece.columns if c != "split"]]]
    review = _review_table(splits)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if plots:
        files["reliability"] = str(_diagram(splits, out, bins, draws, bool(report)))
    record = {"source": str(model_ref), "source_checkpoint": str(src), "confidence_px": px, "bins": bins,
              "method": method, "params": params, "draws": draws, "seeds": [cfg.seed + d for d in range(draws)],
              "knots": {"x": knots[0], "y": knots[1]}, "n_edges": {s: int(len(e) // 2) for s, e in splits.items()},
              "shards": {SELECTION: list(select_shards), REPORT: report},
              "settings": {k: v for k, v in to_dict(cfg).items() if k != "shards"},
              "ece": ece.to_dict(orient="records"), "review": review.to_dict(orient="records")}
    files["calibration"] = str(atomic_write_json(out / CALIBRATION_JSON, record, indent=2))
    extra: dict[str, Any] = {"calibrated_from": str(model_ref), "calibration_method": method}
    checkpoint = copy_checkpoint(src, out, dataclasses.replace(model_cfg, calibration=knots), extra)
    return CalibrationResult(checkpoint, src, knots, px, len(selection), ece, method, params, draws, review, files)


def _diagram(splits: dict[str, pd.DataFrame], out: Path, bins: int, draws: int, has_report: bool) -> Path:
    """reliability.png: before/after on the report split (else the selection split, in-sample),
    in bins of equal numbers of edges."""
    shown = REPORT if has_report else SELECTION
    rel = reliability_table(splits[shown], by=(STAGE,), bins=bins, equal_count=True)
    title = (f"{shown} split, {draws} jitter draw{'s' if draws > 1 else ''} per box, {bins} bins of equal edge count"
             + ("" if has_report else " (in-sample: the calibration was fitted here)"))
    return P.reliability_diagram(rel, out / RELIABILITY_PNG, curve=STAGE, title=title)
