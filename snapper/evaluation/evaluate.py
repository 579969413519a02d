"""Evaluation: per-box Parquet table, the paper's Table 1, confidence report and plots.

    from snapper.evaluation.evaluate import evaluate
    res = evaluate({"snapper": "runs/a/best", "regression": "runs/b/best"}, EvalConfig(shards=[...]), "eval/")
    print(res.table_md)

Every method is scored on the same boxes: the evaluation stream jitters each box with a
generator seeded by its annotation id, so the rough boxes do not depend on the model, the
order or the number of loader workers. The "identity" method (rough box returned unchanged)
is the floor every model must beat; it is read off the first model's rows (same rough boxes)
instead of decoding the images once more.

Outputs in ``out_dir`` (all written atomically):
``boxes.parquet`` (one row per box and method, see :func:`snapper.evaluation.metrics.box_table`),
``summary.csv`` / ``summary.md`` (Table 1 per method, overall and per COCO size bucket),
``confidence.csv`` (edge deviance per confidence decile) and ``flagging.csv`` (bad edges caught
when flagging the least confident k%), ``calibration.csv`` (expected calibration error of the
confidences each model gives, overall and per size bucket, :mod:`snapper.evaluation.calibration`),
``stream_stats.json`` (boxes delivered / skipped by reason), and PNG plots (``reliability.png``:
the reliability diagram).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from snapper.atomic import atomic_write_csv, atomic_write_json, atomic_write_parquet, atomic_write_text
from snapper.config import EvalConfig, ModelConfig
from snapper.crop import CropGeometry
from snapper.data.eval_stream import EvalStream, eval_batches, load_rough_boxes
from snapper.evaluation import plots as P
from snapper.evaluation.calibration import calibration_table, edge_pairs, reliability_table
from snapper.evaluation.metrics import box_table, confidence_report, format_table, summarize, summary_metrics
from snapper.geometry import xywh_to_xyxy
from snapper.inference.guard import COLLAPSED, MOVED
from snapper.inference.snap import Snapper
from snapper.models.checkpoint import load_checkpoint, read_config
from snapper.models.reference import resolve_model

log = logging.getLogger("snapper.evaluation.evaluate")

IDENTITY = "identity"
PARQUET_FILE = "boxes.parquet"
FLAG_PERCENTS = (1, 2, 5, 10, 15, 20, 30, 40, 50)


@dataclass
class EvalResult:
    out_dir: str
    parquet: str
    summary: pd.DataFrame
    metrics: dict[str, float]
    plots: dict[str, str] = field(default_factory=dict)
    table_md: str = ""
    stream_stats: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------- predictions


def _numpy(batch: dict[str, Any], key: str) -> np.ndarray:
    v = batch[key]
    return v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def _sources(per_box: list[Any]) -> tuple[list[Any], np.ndarray]:
    """Each box's (image, scale) as distinct images and an owner index per box."""
    index: dict[int, int] = {}
    sources: list[Any] = []
    owner = np.empty(len(per_box), dtype=np.int64)
    for i, src in enumerate(per_box):
        key = id(src[0])
        if key not in index:
            index[key] = len(sources)
            sources.append(src)
        owner[i] = index[key]
    return sources, owner


def _stream(cfg: EvalConfig, model_cfg: ModelConfig) -> EvalStream:
    if not cfg.shards:
        raise ValueError("EvalConfig.shards is empty: give the held-out shard URLs/globs")
    return eval_batches(cfg.shards, model_cfg, cfg.jitter, seed=cfg.seed, buffer_ratio=cfg.snap.buffer_ratio,
                        batch_size=cfg.snap.batch_size, max_boxes=cfg.max_boxes, workers=cfg.workers,
                        verify_shards=cfg.verify_shards, keep_images=cfg.snap.passes == 2,
                        rough=load_rough_boxes(cfg.rough_file) if cfg.rough_file else None)


def evaluate_model(
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    cfg: EvalConfig,
    method: str = "snapper",
    device: "torch.device | str | None" = None,
    examples: list[dict[str, Any]] | None = None,
    n_examples: int = 0,
    stats: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Per-box table of ``model`` on ``cfg.shards`` (leaves the model in eval mode).

    ``examples`` (if given) receives up to ``n_examples`` crops with their boxes for plots;
    ``stats`` receives the stream's delivered/skipped counts.
    """
    settings = cfg.snap if device is None else dataclasses.replace(cfg.snap, device=str(device))
    snapper = Snapper(model, model_cfg, settings, name=method)
    stream = _stream(cfg, model_cfg)
    tables = []
    candidates: list[tuple[int, int, int, int, dict[str, Any]]] = []  # max-heap (negated) of the lowest keys
    for batch in stream:
        windows, sizes = _numpy(batch, "window"), _numpy(batch, "image_size")
        geo = CropGeometry(windows, model_cfg.input_size)
        sources, owner = _sources(batch["source"]) if "source" in batch else (None, None)
        true, rough = _numpy(batch, "true"), _numpy(batch, "rough")
        out = snapper.read_out(batch["image"], geo, sizes[:, 0], sizes[:, 1], sources, owner, rough=rough)
        pred, conf = out.boxes, out.confidence
        df = box_table(pred, true, image_id=_numpy(batch, "image_id"), annotation_id=_numpy(batch, "annotation_id"),
                       category_id=_numpy(batch, "category_id"), rough_xyxy=rough, confidence=conf,
                       area=_numpy(batch, "area"), method=method,
                       extra={"file_name": np.asarray(batch.get("file_name", [""] * len(pred)), dtype=object),
                              "guard": np.asarray([out.guard.label(i) for i in range(len(pred))], dtype=object)})
        tables.append(df)
        if examples is not None and n_examples > 0:
            ann_ids = _numpy(batch, "annotation_id")
            for j in range(len(pred)):
                key = _example_key(int(ann_ids[j]))
                if len(candidates) < EXAMPLE_POOL * n_examples or key < -candidates[0][0]:
                    ex = {"crop": batch["image"][j].numpy(), "window": windows[j], "rough": rough[j],
                          "true": true[j], "pred": pred[j], "iou": float(df["iou"].iloc[j]), "conf": conf[j],
                          "method": method, "input_size": model_cfg.input_size, "annotation_id": int(ann_ids[j])}
                    # Annotation ids can repeat across merged datasets: the running count breaks
                    # such ties (never reaching the dict, which does not compare).
                    item = (-key, int(ann_ids[j]), len(tables), j, ex)
                    if len(candidates) < EXAMPLE_POOL * n_examples:
                        heapq.heappush(candidates, item)
                    else:
                        heapq.heapreplace(candidates, item)
    if examples is not None:
        examples.extend(spread_by_iou([c[-1] for c in candidates], n_examples))
    if stats is not None:
        stats.update(stream.stats.as_dict())
    _report_skips(stream.stats.as_dict(), method)
    if not tables:
        return box_table(np.zeros((0, 4)), np.zeros((0, 4)), method=method)
    return pd.concat(tables, ignore_index=True)


EXAMPLE_POOL = 8  # candidates kept per example shown


def _example_key(annotation_id: int) -> int:
    """Order-free pseudo-random rank of a box: the example candidates are the boxes with the
    lowest keys, the same for every model, batch order and worker count."""
    return int.from_bytes(hashlib.blake2b(str(annotation_id).encode(), digest_size=8).digest(), "little")


def spread_by_iou(candidates: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` examples at evenly spaced IoU ranks, worst first: a grid that shows the failures
    next to the typical and the best cases, instead of whatever came first."""
    if n <= 0 or not candidates:
        return []
    ranked = sorted(candidates, key=lambda e: (e["iou"] if np.isfinite(e["iou"]) else -1.0, e["annotation_id"]))
    picks = np.unique(np.linspace(0, len(ranked) - 1, min(n, len(ranked))).round().astype(int))
    return [ranked[i] for i in picks]


def _report_skips(stats: dict[str, Any], what: str) -> None:
    skipped = sum(stats.get("skipped_images", {}).values()) + sum(stats.get("skipped_boxes", {}).values())
    if skipped or stats.get("shard_errors"):
        log.warning("%s: the evaluation stream skipped images %s, boxes %s, shard errors %d (boxes scored: %d)",
                    what, stats.get("skipped_images"), stats.get("skipped_boxes"), stats.get("shard_errors", 0),
                    stats.get("boxes", 0))


def evaluate_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    cfg: EvalConfig,
    method: str | None = None,
    examples: list[dict[str, Any]] | None = None,
    n_examples: int = 0,
    stats: dict[str, Any] | None = None,
    calibrated: bool = True,
) -> pd.DataFrame:
    """Per-box table (with per-edge confidence) of the checkpoint in ``checkpoint_dir`` (or an
    MLflow model reference, see :func:`snapper.models.reference.resolve_model`);
    ``method`` defaults to the model's head ("edges" -> "snapper", "regression").
    ``calibrated=False`` reads the raw confidence of a calibrated model (what a calibration is
    fitted on: :mod:`snapper.evaluation.calibrate`)."""
    model, model_cfg, _ = load_checkpoint(resolve_model(checkpoint_dir))
    if not calibrated:
        model_cfg = dataclasses.replace(model_cfg, calibration=None)
    name = method or ("snapper" if model_cfg.head == "edges" else model_cfg.head)
    return evaluate_model(model, model_cfg, cfg, method=name, examples=examples, n_examples=n_examples, stats=stats)


def identity_from(df: pd.DataFrame) -> pd.DataFrame:
    """The identity rows (prediction = rough box) for the boxes of a model's table."""
    rough = xywh_to_xyxy(df[["rough_x", "rough_y", "rough_w", "rough_h"]].to_numpy(np.float64))
    true = xywh_to_xyxy(df[["true_x", "true_y", "true_w", "true_h"]].to_numpy(np.float64))
    extra = {"file_name": df["file_name"].to_numpy(object)} if "file_name" in df else None
    return box_table(rough, true, image_id=df["image_id"].to_numpy(), annotation_id=df["annotation_id"].to_numpy(),
                     category_id=df["category_id"].to_numpy(), rough_xyxy=rough, area=df["area"].to_numpy(),
                     method=IDENTITY, extra=extra)


def evaluate_identity(cfg: EvalConfig, stats: dict[str, Any] | None = None) -> pd.DataFrame:
    """The paper's floor: the rough (jittered) box itself as the prediction."""
    # Crops are not looked at; the smallest input keeps the stream's work to decoding.
    stream = _stream(cfg, ModelConfig(input_size=8))
    tables = []
    for batch in stream:
        rough, true = _numpy(batch, "rough"), _numpy(batch, "true")
        tables.append(box_table(rough, true, image_id=_numpy(batch, "image_id"),
                                annotation_id=_numpy(batch, "annotation_id"),
                                category_id=_numpy(batch, "category_id"), rough_xyxy=rough,
                                area=_numpy(batch, "area"), method=IDENTITY,
                                extra={"file_name": np.asarray(batch.get("file_name", [""] * len(rough)),
                                                               dtype=object)}))
    if stats is not None:
        stats.update(stream.stats.as_dict())
    _report_skips(stream.stats.as_dict(), IDENTITY)
    if not tables:
        return box_table(np.zeros((0, 4)), np.zeros((0, 4)), method=IDENTITY)
    return pd.concat(tables, ignore_index=True)


# ----------------------------------------------------------------------------------- outputs


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    return atomic_write_parquet(df, path)


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    return atomic_write_csv(df, path)


def _check_same_boxes(tables: dict[str, pd.DataFrame]) -> None:
    """Every method must be scored on the same boxes, or the comparison means nothing."""
    ref_name, ref = next(iter(tables.items()))
    ref_ids = set(ref["annotation_id"].dropna().astype(int))
    for name, df in tables.items():
        ids = set(df["annotation_id"].dropna().astype(int))
        if ids != ref_ids:
            raise RuntimeError(f"method {name!r} was scored on {len(ids)} boxes and {ref_name!r} on {len(ref_ids)} "
                               f"({len(ids ^ ref_ids)} differ): the streams delivered different boxes; see the "
                               "skip counts in the log")


def method_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """``{"<method>/<size>/<metric>": value}`` for every method of a summary."""
    out: dict[str, float] = {}
    for method, rows in summary.groupby("method", sort=False):
        out.update(summary_metrics(rows.drop(columns=["method"]), prefix=str(method)))
    return out


def guard_metrics(df: pd.DataFrame) -> dict[str, float]:
    """``{"<method>/guard/collapsed": n, "<method>/guard/moved": n}``: the boxes each model's
    read-out gave back rough (whole, or some edges) under the broken-box guard."""
    if "guard" not in df:
        return {}
    out: dict[str, float] = {}
    for method, labels in df.groupby("method", sort=False)["guard"]:
        if method == IDENTITY:
            continue
        reasons = labels.fillna("").astype(str).str.split(":").str[0]
        out[f"{method}/guard/collapsed"] = float((reasons == COLLAPSED).sum())
        out[f"{method}/guard/moved"] = float((reasons == MOVED).sum())
    return out


def _confidence_outputs(df: pd.DataFrame, checkpoints: dict[str, str | os.PathLike[str]], out: Path, plots: bool,
                        files: dict[str, str], plot_paths: dict[str, str]) -> pd.DataFrame:
    """Is the per-edge confidence useful (``confidence.csv``, ``flagging.csv``: ranking) and does
    it mean what it says (``calibration.csv``, ``reliability.png``: each model's confidences
    against its own ``confidence_px``)? Written into ``files`` / ``plot_paths``; returns the
    calibration table."""
    report = confidence_report(df, flag_percents=FLAG_PERCENTS)
    files["confidence_csv"] = str(_write_csv(report.deciles, out / "confidence.csv"))
    files["flagging_csv"] = str(_write_csv(report.flagging, out / "flagging.csv"))
    frames, tables = [], []
    for name, path in checkpoints.items():
        model_cfg = read_config(resolve_model(path))[0]
        edges = edge_pairs(df[df["method"] == name], model_cfg.confidence_px)
        if len(edges):
            frames.append(edges)
            tables.append(calibration_table(edges).assign(confidence_px=model_cfg.confidence_px,
                                                          calibrated=model_cfg.calibration is not None))
    cal = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=["method", "size", "n_edges", "conf_mean", "hit_rate", "ece", "confidence_px", "calibrated"])
    files["calibration_csv"] = str(_write_csv(cal, out / "calibration.csv"))
    if plots and len(report.deciles):
        plot_paths["confidence"] = str(P.confidence_calibration(report, out / "confidence.png"))
    if plots and frames:
        rel = reliability_table(pd.concat(frames, ignore_index=True))
        plot_paths["reliability"] = str(P.reliability_diagram(rel, out / "reliability.png",
                                                              title="per-edge confidence vs outcome"))
    return cal


def evaluate(
    checkpoints: dict[str, str | os.PathLike[str]],
    cfg: EvalConfig,
    out_dir: str | os.PathLike[str],
    include_identity: bool = True,
    n_examples: int = 16,
    plots: bool = True,
    passes: dict[str, int] | None = None,
) -> EvalResult:
    """Evaluate each checkpoint (method name -> checkpoint folder) on the same boxes and write
    the per-box table, summaries and plots to ``out_dir`` (:func:`snapper.mlops.tracking.log_evaluation`
    puts them in an MLflow run). ``passes`` (method name -> 1 or 2) overrides ``cfg.snap.passes``
    per method, e.g. to compare one checkpoint with and without the zoom-in pass."""
    if not checkpoints and not include_identity:
        raise ValueError("nothing to evaluate: no checkpoints and include_identity=False")
    for name in checkpoints:
        if not name or name == IDENTITY:
            raise ValueError(f"method name {name!r} is reserved or empty")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, pd.DataFrame] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    stream_stats: dict[str, Any] = {}
    for name, path in checkpoints.items():
        log.info("evaluating %s (%s) on %s", name, path, cfg.shards)
        examples[name] = []
        stats: dict[str, Any] = {}
        method_passes = (passes or {}).get(name, cfg.snap.passes)
        method_cfg = dataclasses.replace(cfg, snap=dataclasses.replace(cfg.snap, passes=method_passes))
        tables[name] = evaluate_checkpoint(path, method_cfg, method=name, examples=examples[name],
                                           n_examples=n_examples, stats=stats)
        stream_stats[name] = stats
    if include_identity:
        if tables:
            tables[IDENTITY] = identity_from(next(iter(tables.values())))
        else:
            stats = {}
            tables[IDENTITY] = evaluate_identity(cfg, stats=stats)
            stream_stats[IDENTITY] = stats
    _check_same_boxes(tables)
    df = pd.concat(list(tables.values()), ignore_index=True)
    if len(df) == 0:
        raise RuntimeError(f"no boxes were evaluated from {cfg.shards!r}: stream stats {stream_stats}")

    parquet = write_parquet(df, out / PARQUET_FILE)
    summary = summarize(df)
    files = {"parquet": str(parquet), "summary_csv": str(_write_csv(summary, out / "summary.csv"))}
    overall = summary[summary["size"] == "all"]
    table_md = ("## Table 1 (all boxes)\n\n" + format_table(overall)
                + "\n## By COCO size bucket\n\n" + format_table(summary) + "\n")
    atomic_write_text(out / "summary.md", table_md)
    files["summary_md"] = str(out / "summary.md")
    atomic_write_json(out / "stream_stats.json", stream_stats, sort_keys=True)
    files["stream_stats"] = str(out / "stream_stats.json")

    plot_paths: dict[str, str] = {}
    calibration = _confidence_outputs(df, checkpoints, out, plots, files, plot_paths)
    if plots:
        plot_paths["deviance"] = str(P.deviance_histograms(df, out / "deviance.png"))
        ex = [e for name in examples for e in examples[name]]
        if ex:
            plot_paths["examples"] = str(P.example_grid(ex[:n_examples], out / "examples.png"))

    metrics = method_metrics(summary)
    metrics.update(guard_metrics(df))
    metrics.update({f"{r.method}/{r.size}/edge_ece": float(r.ece) for r in calibration.itertuples() if np.isfinite(r.ece)})
    for method, s in stream_stats.items():
        metrics[f"{method}/stream/skipped_images"] = float(sum(s.get("skipped_images", {}).values()))
        metrics[f"{method}/stream/skipped_boxes"] = float(sum(s.get("skipped_boxes", {}).values()))
    return EvalResult(out_dir=str(out), parquet=str(parquet), summary=summary, metrics=metrics, plots=plot_paths,
                      table_md=table_md, stream_stats=stream_stats, files=files)
