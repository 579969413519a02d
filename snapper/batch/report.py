"""Views of a finished batch run for people and trackers: the counts and review tables and
the markdown summary (shown as Prefect artifacts), and the run's numbers as MLflow metrics.

Kept out of the flow so they can be tested and reused without Prefect; the flow only
publishes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from snapper.batch.schema import REVIEW_CSV, SUMMARY_JSON, TABLE1_CSV
from snapper.config import BatchConfig
from snapper.evaluation.metrics import format_table, summary_metrics
from snapper.mlops import tracking

REVIEW_ROWS = 200  # rows of the review list shown as an artifact (the CSV has them all)
TRACKED_FILES = (SUMMARY_JSON, REVIEW_CSV, TABLE1_CSV)


def counts_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Annotations per status and kept reason, plus the review count."""
    rows = [{"status": "snapped", "reason": "", "annotations": summary["status"]["snapped"]}]
    rows += [{"status": "kept", "reason": r, "annotations": n} for r, n in summary["reasons"].items()]
    rows.append({"status": "needs_review",
                 "reason": ", ".join(f"{k}={v}" for k, v in summary["review_reasons"].items()),
                 "annotations": summary["needs_review"]})
    return rows


def review_table(out_dir: str | os.PathLike[str], limit: int = REVIEW_ROWS) -> list[dict[str, Any]]:
    """The first ``limit`` rows of ``review.csv`` as JSON-able dicts (floats rounded)."""
    df = pd.read_csv(Path(out_dir) / REVIEW_CSV)
    df = df.head(limit).astype(object).where(df.head(limit).notna(), None)
    return [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in df.to_dict("records")]


def summary_markdown(name: str, s: dict[str, Any]) -> str:
    lines = [f"# Batch snap: {name}", "",
             f"- input: `{s['input']}` ({s['n_annotations']} annotations, {s['n_images']} images)",
             f"- output: `{s['output']}`",
             f"- snapped {s['status']['snapped']}, kept {s['status']['kept']}, needs review {s['needs_review']}",
             f"- model: `{s.get('checkpoint', s.get('model'))}`"]
    mp = s["moved"]["moved_px"]
    if mp.get("n"):
        lines.append(f"- edge movement (px): median {mp['q50']}, 95th pct {mp['q95']}; "
                     f"IoU with rough median {s['moved']['iou_with_rough']['q50']}")
    table = (s.get("truth") or {}).get("table1") or []
    if table:
        lines += ["", "## Table 1 against the truth (input = rough boxes)", "", format_table(pd.DataFrame(table))]
    return "\n".join(lines)


def tracking_metrics(s: dict[str, Any]) -> dict[str, Any]:
    """The summary's numbers as flat MLflow metric names (``kept/<reason>``,
    ``confidence/<edge>/<quantile>``, ``moved/...``, ``truth/...``)."""
    metrics: dict[str, Any] = {"n_annotations": s["n_annotations"], "snapped": s["status"]["snapped"],
                               "kept": s["status"]["kept"], "needs_review": s["needs_review"],
                               "fused_objects": s["fused_objects"], "annotations_per_s": s.get("annotations_per_s")}
    metrics.update({f"kept/{k}": v for k, v in s["reasons"].items()})
    for edge, q in s["confidence"].items():
        metrics.update({f"confidence/{edge}/{k}": v for k, v in q.items() if k != "n"})
    for what, q in s["moved"].items():
        if isinstance(q, dict):
            metrics.update({f"moved/{what}/{k}": v for k, v in q.items() if k != "n"})
    table = (s.get("truth") or {}).get("table1") or []
    if table:
        metrics.update(summary_metrics(pd.DataFrame(table), prefix="truth"))
    return metrics


def log_summary(s: dict[str, Any], cfg: BatchConfig, out_dir: str | os.PathLike[str], experiment: str,
                run_name: str, tags: dict[str, Any] | None = None) -> str:
    """One MLflow run with the summary numbers, the settings and the summary/review files;
    returns its id."""
    metrics = tracking_metrics(s)
    with tracking.start_run(experiment, run_name=run_name, tags={"input": s["input"], **(tags or {})}) as run:
        tracking.log_config(cfg, prefix="batch.")
        tracking.log_metrics(metrics)
        for f in TRACKED_FILES:
            if (Path(out_dir) / f).is_file():
                tracking.log_artifact(Path(out_dir) / f)
        return run.info.run_id
