"""Evaluation plots (PNG), drawn with matplotlib's object API on the Agg canvas.

Why not ``pyplot``: it keeps global state and picks a GUI backend from the environment;
``Figure`` + ``FigureCanvasAgg`` renders headless, in worker threads, with nothing to close.
Every function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from snapper.atomic import atomic_write_with
from snapper.crop import CropGeometry
from snapper.evaluation.metrics import DEV_CORNER_COLS, DEV_EDGE_COLS
from snapper.geometry import EDGE_NAMES

IDENTITY = "identity"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    return atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))


def _methods(df: pd.DataFrame) -> list[str]:
    """Identity first (the reference), then the models in table order."""
    ms = list(dict.fromkeys(df["method"].astype(str)))
    return sorted(ms, key=lambda m: m != IDENTITY)


def deviance_histograms(df: pd.DataFrame, path: str | os.PathLike[str], max_px: float = 10.0) -> Path:
    """Edge and corner deviance (px) per method, input (identity) vs snapped; the last bin
    collects everything at or beyond ``max_px``."""
    fig = _figure(11, 4)
    axes = fig.subplots(1, 2)
    bins = np.linspace(0, max_px, int(max_px * 4) + 1)
    for ax, cols, title in ((axes[0], DEV_EDGE_COLS, "edge deviance"), (axes[1], DEV_CORNER_COLS, "corner deviance")):
        for m in _methods(df):
            v = df.loc[df["method"] == m, cols].to_numpy(np.float64).reshape(-1)
            v = np.clip(v[np.isfinite(v)], 0, max_px - 1e-9)
            if len(v) == 0:
                continue
            ax.hist(v, bins=bins, histtype="step", linewidth=1.6, density=True,
                    label=f"{m} (<1px {100 * (v < 1).mean():.0f}%, <3px {100 * (v < 3).mean():.0f}%)",
                    linestyle="--" if m == IDENTITY else "-")
        for t in (1, 3):
            ax.axvline(t, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel(f"{title} (px, original image; last bin = >= {max_px:g})")
        ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend(fontsize=8)
    return _save(fig, path)


def noise_histograms(pairs: pd.DataFrame, path: str | os.PathLike[str], max_frac: float = 0.5) -> Path:
    """How far outward each edge of the rough boxes lies from the gold one, in % of the object's
    size (``outward_<edge>`` of :func:`snapper.evaluation.noise.pair_boxes`), with the paper's
    jitter range marked: where a person sees at once whether boxes are drawn loose or tight."""
    fig = _figure(12, 3.2)
    axes = fig.subplots(1, len(EDGE_NAMES), sharey=True)
    bins = np.linspace(-100 * max_frac, 100 * max_frac, 51)
    for ax, e in zip(axes, EDGE_NAMES):
        v = 100 * np.clip(pairs[f"outward_{e}"].to_numpy(np.float64), -max_frac, max_frac)
        ax.hist(v, bins=bins, color="tab:blue", alpha=0.8)
        ax.axvline(0, color="black", linewidth=0.8)
        for x in (-15, 15):  # an edge of the paper's jitter moves at most ~15% (shift 10% + scale 5%)
            ax.axvline(x, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"{e}: mean {np.mean(v):+.1f}%")
        ax.set_xlabel("outward (% of size; last bins clipped)")
    axes[0].set_ylabel("pairs")
    return _save(fig, path)


def confidence_calibration(report: Any, path: str | os.PathLike[str]) -> Path:
    """Left: mean edge deviance per confidence decile (0 = least confident). Right: share of
    bad edges (>= 3 px off) caught when flagging the least confident k% of edges, vs random."""
    deciles: pd.DataFrame = report.deciles
    flagging: pd.DataFrame = report.flagging
    fig = _figure(11, 4)
    ax1, ax2 = fig.subplots(1, 2)
    for m in dict.fromkeys(deciles.get("method", pd.Series(["model"] * len(deciles)))):
        d = deciles[deciles["method"] == m] if "method" in deciles else deciles
        ax1.plot(d["bin"], d["dev_mean_px"], marker="o", label=f"{m} mean")
        ax1.plot(d["bin"], d["dev_median_px"], marker=".", linestyle="--", label=f"{m} median")
    ax1.set_xlabel("confidence decile (0 = least confident)")
    ax1.set_ylabel("edge deviance (px)")
    ax1.set_yscale("symlog", linthresh=1.0)
    ax1.set_title("deviance by confidence")
    ax1.legend(fontsize=8)
    if len(flagging):
        for m in dict.fromkeys(flagging.get("method", pd.Series(["model"] * len(flagging)))):
            f = flagging[flagging["method"] == m] if "method" in flagging else flagging
            ax2.plot(f["flag_pct"], f["caught_pct"], marker="o", label=m)
        k = np.array(sorted(flagging["flag_pct"].unique()))
        ax2.plot(k, k, color="grey", linestyle=":", label="random")
    ax2.set_xlabel("edges flagged for review (%, least confident first)")
    ax2.set_ylabel("bad edges caught (%)")
    ax2.set_ylim(0, 100)
    ax2.set_title("flagging edges >= 3 px off")
    ax2.legend(fontsize=8)
    return _save(fig, path)


def reliability_diagram(table: pd.DataFrame, path: str | os.PathLike[str], curve: str = "method",
                        title: str = "") -> Path:
    """Observed share of edges within ``confidence_px`` against the confidence the model gave,
    per confidence bin, one panel per size bucket ("all" first) and one line per ``curve`` value
    (methods, or "before"/"after" calibration); on the diagonal a confidence means what it
    says. ``table``: :func:`snapper.evaluation.calibration.reliability_table`."""
    sizes = list(dict.fromkeys(table["size"].astype(str))) if len(table) else ["all"]
    fig = _figure(3.6 * len(sizes), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(sizes), sharey=True))
    for ax, size in zip(axes, sizes):
        rows = table[table["size"] == size] if len(table) else table
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="calibrated")
        for name in dict.fromkeys(rows[curve].astype(str)) if curve in rows else []:
            r = rows[rows[curve].astype(str) == name]
            ax.plot(r["conf_mean"], r["hit_rate"], marker="o", markersize=3, label=f"{name} ({int(r['n_edges'].sum())})")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("confidence given (bin mean)")
        ax.set_title(f"{size} boxes")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("edges within confidence_px (share)")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _rect(ax: Any, box_input: np.ndarray, color: str, style: str = "-") -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box_input
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.2, linestyle=style))


def example_grid(examples: list[dict[str, Any]], path: str | os.PathLike[str], ncols: int = 4) -> Path:
    """Model-input crops with the rough (red, dashed), true (green) and predicted (yellow) boxes.

    Each example: ``crop`` uint8 (3, S, S), ``window``/``rough``/``true``/``pred`` xyxy in
    original px, ``input_size``, optional ``iou``, ``conf`` (4,), ``method``.
    """
    n = max(len(examples), 1)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig = _figure(3 * ncols, 3.2 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).reshape(-1)
    for ax in axes:
        ax.set_axis_off()
    for ax, ex in zip(axes, examples):
        size = int(ex["input_size"])
        crop = np.asarray(ex["crop"])
        ax.imshow(np.transpose(crop, (1, 2, 0)).astype(np.uint8), extent=(0, size, size, 0), interpolation="nearest")
        geo = CropGeometry(ex["window"], size)
        for key, color, style in (("rough", "red", "--"), ("true", "lime", "-"), ("pred", "yellow", "-")):
            _rect(ax, geo.to_input(np.asarray(ex[key]).reshape(1, 4))[0], color, style)
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
        title = f"{ex.get('method', '')} ann {ex.get('annotation_id', '')}\nIoU {ex.get('iou', float('nan')):.3f}"
        conf = ex.get("conf")
        if conf is not None and np.isfinite(np.asarray(conf, dtype=np.float64)).all():
            title += " conf " + "/".join(f"{c:.2f}" for c in conf)
        ax.set_title(title, fontsize=7)
    fig.suptitle("rough (red, dashed) / true (green) / predicted (yellow); edges " + ", ".join(EDGE_NAMES),
                 fontsize=8)
    return _save(fig, path)
