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
monotone map keeps the order of edges, so it stays the same; per-size maps may reorder edges of
different buckets, so it can move).

By default (``per_size``) one map is fitted per COCO size bucket of the *rough* box (small <
32^2 <= medium < 96^2 <= large, in original pixels: what inference knows), and one for every box,
which a bucket with too few selection edges reads instead
(:data:`snapper.evaluation.calibration.MIN_BUCKET_EDGES`). ``model.calibration`` then holds
``{"all": knots, "small": knots, ...}``, and the read-out picks each box's map by its rough box
(:func:`snapper.models.edges.calibrate_confidence`). One map over all sizes trades small boxes
(already calibrated raw) against large ones; cross-validated on the COCO selection split, the
per-size maps had lower ECE in every bucket and the lowest log-loss, which made them the default
(on that project's report split they fixed small boxes but not the overall ECE:
``experiments/results/calibrate-lite0``). ``per_size=False`` fits one map, stored as plain knots,
which keeps the order of edges exactly.

The new folder holds ``model.pt`` (the weights, byte for byte), ``config.json`` (with
``model.calibration``; written last, so a folder with it is complete), ``calibration.json``
(knots, coefficients, the per-size maps' edge counts, ECE before/after per split and size
bucket, review catch, the settings)
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
    MIN_BUCKET_EDGES,
    ROUGH_AREA,
    Knots,
    calibrated_pairs,
    calibration_table,
    edge_pairs,
    fit_map,
    fit_size_maps,
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
# One map for every box by default: an increasing map cannot reorder edges, so the review list
# (least confident edges first) stays exactly the model's, which reviewing depends on; per-size
# maps (--per-size) can reorder edges across buckets. The selection split's cross-validation
# (experiments/results/calibrate-lite0/study.py) found per-size maps no clearly better overall.
PER_SIZE = False


@dataclass
class CalibrationResult:
    """What :func:`calibrate_checkpoint` made: the new checkpoint, its knots, the ECE table
    (``split``, ``stage``, ``size``, ``n_edges``, ``conf_mean``, ``hit_rate``, ``ece`` and, as
    :func:`snapper.evaluation.calibration.calibration_table` gives them, its first-draw value,
    interval and floor) and the review table (``split``, ``stage``, ``draws``, ``n_edges``,
    ``n_bad``, ``caught_pct``)."""

    checkpoint: Path
    source: Path
    calibration: "Knots | dict[str, Knots]"  # as stored in model.calibration (a dict: per size)
    confidence_px: float
    n_edges: int  # selection edges the map was fitted on (all draws)
    ece: pd.DataFrame
    method: str = DEFAULT_METHOD
    params: dict[str, float] = field(default_factory=dict)
    draws: int = 1
    review: pd.DataFrame = field(default_factory=pd.DataFrame)
    files: dict[str, str] = field(default_factory=dict)
    # per key ("all", then each size bucket of the rough box): n_edges, n_hits, n_misses, own_map,
    # params (fit_size_maps); empty for a single map
    size_maps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def per_size(self) -> bool:
        return isinstance(self.calibration, dict)

    @property
    def knots(self) -> int:
        """Knots stored, over all maps."""
        maps = self.calibration.values() if isinstance(self.calibration, dict) else [self.calibration]
        return sum(len(m[0]) for m in maps)

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
        # the rough box's area (original px, as the read-out computes it) picks a per-size map
        df[ROUGH_AREA] = df["rough_w"] * df["rough_h"]
        frames.append(edge_pairs(df, confidence_px, by=("method", ROUGH_AREA)).assign(draw=draw))
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


def _fit(selection: pd.DataFrame, method: str, per_size: bool
         ) -> tuple["Knots | dict[str, Knots]", dict[str, float], dict[str, dict[str, Any]]]:
    """The map(s) fitted on the selection edges: (what model.calibration stores, the map for
    every box's coefficients, per-size details or {})."""
    try:
        if not per_size:
            knots, params = fit_map(selection["conf"], selection["hit"], method)
            return knots, params, {}
        maps, info = fit_size_maps(selection, method)
    except ValueError as e:
        raise BadFileError(f"the selection shards: {e}") from None
    return maps, dict(info["all"]["params"]), info  # type: ignore[call-overload]


def _knots_record(calibration: "Knots | dict[str, Knots]") -> dict[str, Any]:
    if isinstance(calibration, dict):
        return {k: {"x": v[0], "y": v[1]} for k, v in calibration.items()}
    return {"x": calibration[0], "y": calibration[1]}


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
    per_size: bool = PER_SIZE,
) -> CalibrationResult:
    """Fit the model's confidence calibration (``method``, one of
    :data:`snapper.evaluation.calibration.METHODS`) on ``select_shards`` over ``draws`` jitter
    draws (with any calibration it already has switched off) and write a calibrated copy to
    ``out_dir``; with ``report_shards``, also measure it there. ``cfg``: the jitter and read-out
    settings the calibration is for (its ``shards`` are ignored). ``n_boot``: resamples of each
    ECE's interval (0: none). ``per_size``: one map per COCO size bucket of the rough box
    (:func:`snapper.evaluation.calibration.fit_size_maps`; a bucket with too few selection
    edges reads the map of every box) instead of one map for all."""
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
    calibration, params, size_maps = _fit(selection, method, per_size)
    splits = {SELECTION: calibrated_pairs(selection, calibration, STAGE)}
    if report:
        splits[REPORT] = calibrated_pairs(_raw_edges(src, cfg, report, px, REPORT, draws), calibration, STAGE)
    ece = pd.concat([calibration_table(e, by=(STAGE,), bins=bins, n_boot=n_boot).assign(split=s)
                     for s, e in splits.items()], ignore_index=True)
    ece = ece[["split", *[c for c in ece.columns if c != "split"]]]
    review = _review_table(splits)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if plots:
        files["reliability"] = str(_diagram(splits, out, bins, draws, bool(report)))
    record = {"source": str(model_ref), "source_checkpoint": str(src), "confidence_px": px, "bins": bins,
              "method": method, "params": params, "per_size": per_size,
              **({"min_bucket_edges_per_draw": MIN_BUCKET_EDGES, "size_maps": size_maps} if per_size else {}),
              "draws": draws, "seeds": [cfg.seed + d for d in range(draws)],
              "knots": _knots_record(calibration), "n_edges": {s: int(len(e) // 2) for s, e in splits.items()},
              "shards": {SELECTION: list(select_shards), REPORT: report},
              "settings": {k: v for k, v in to_dict(cfg).items() if k != "shards"},
              "ece": ece.to_dict(orient="records"), "review": review.to_dict(orient="records")}
    files["calibration"] = str(atomic_write_json(out / CALIBRATION_JSON, record, indent=2))
    extra: dict[str, Any] = {"calibrated_from": str(model_ref), "calibration_method": method,
                             "calibration_per_size": per_size}
    checkpoint = copy_checkpoint(src, out, dataclasses.replace(model_cfg, calibration=calibration), extra)
    return CalibrationResult(checkpoint, src, calibration, px, len(selection), ece, method, params, draws, review,
                             files, size_maps)


def _diagram(splits: dict[str, pd.DataFrame], out: Path, bins: int, draws: int, has_report: bool) -> Path:
    """reliability.png: before/after on the report split (else the selection split, in-sample),
    in bins of equal numbers of edges."""
    shown = REPORT if has_report else SELECTION
    rel = reliability_table(splits[shown], by=(STAGE,), bins=bins, equal_count=True)
    title = (f"{shown} split, {draws} jitter draw{'s' if draws > 1 else ''} per box, {bins} bins of equal edge count"
             + ("" if has_report else " (in-sample: the calibration was fitted here)"))
    return P.reliability_diagram(rel, out / RELIABILITY_PNG, curve=STAGE, title=title)
