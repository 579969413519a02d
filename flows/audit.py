"""Flow ``audit-dataset``: snap every box of a dataset believed correct and rank the boxes by how
likely an annotated edge is misplaced. Thin wiring around :mod:`snapper.batch.audit`, as
``snapper audit`` runs it: batch-snap (bad images and boxes kept with their reasons) -> scores,
ranking, ``audit.parquet``, the contact sheet, and ``review.csv`` replaced by the suspects (what
``review push`` sends). Publishes the counts and the top suspects as Prefect artifacts.

    prefect deployment run 'audit-dataset/default' --param ann_file=data/x/annotations.json \\
        --param images_dir=data/x/images --param out_dir=audits/x

Run once locally (ephemeral Prefect): ``python -m flows.audit ANN.json IMAGES OUT``. Relative
paths resolve against ``$SNAPPER_HOME`` (or the working directory), like every flow.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import artifact_key, library_logs_to, override, resolve
from snapper.batch.audit import AUDIT_SHEET, write_audit
from snapper.batch.pipeline import batch_snap, check_folders, result_for
from snapper.batch.schema import REVIEW_CSV
from snapper.config import AuditConfig
from snapper.models.reference import DEFAULT_MODEL, resolve_model
from snapper.overrides import from_dict, to_dict

TOP_ROWS = 50  # suspects shown as an artifact (review.csv has them all)


@task(name="snap-dataset")
def snap_task(ann_file: str, images_dir: str, out_dir: str, checkpoint: str, cfg: dict[str, Any]) -> str:
    """Every annotated box snapped as batch-snap does (chunks reused on a re-run)."""
    with library_logs_to(get_run_logger()):
        batch_snap(ann_file, images_dir, out_dir, checkpoint, from_dict(AuditConfig, cfg).batch)
    return out_dir


@task(name="score-and-rank")
def score_task(out_dir: str, images_dir: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Scores, ranks, flags: audit.parquet, audit.json, audit_top.html, review.csv replaced."""
    with library_logs_to(get_run_logger()):
        return write_audit(result_for(out_dir), images_dir, from_dict(AuditConfig, cfg)).summary


def publish(name: str, out_dir: str, s: dict[str, Any]) -> None:
    key = artifact_key("audit", name)
    lines = [f"# Dataset audit: {name}", "",
             f"- input: `{s['input']}`; output folder `{out_dir}`",
             f"- {s['n_annotations']} annotations: {s['n_scored']} scored, {s['n_unscored']} not scored "
             f"{s['unscored_reasons']}",
             f"- flagged {s['n_flagged']} suspects (flag={s['flag']}); suspect edges {s['suspect_edges']}",
             f"- review list: `{out_dir}/{REVIEW_CSV}`"]
    if s["files"].get("sheet"):
        lines.append(f"- contact sheet: `{out_dir}/{AUDIT_SHEET}`")
    create_markdown_artifact(key=key, markdown="\n".join(lines), description=f"audit of {name}")
    top = pd.read_csv(f"{out_dir}/{REVIEW_CSV}").head(TOP_ROWS)
    rows = json.loads(top.to_json(orient="records", double_precision=4))
    create_table_artifact(key=f"{key}-suspects", table=rows, description=f"top {len(rows)} suspects, most suspect first")


@flow(name="audit-dataset", log_prints=True)
def audit_dataset_flow(
    ann_file: str,
    images_dir: str,
    out_dir: str,
    model: str = DEFAULT_MODEL,
    flag: float | None = None,
    overrides: dict[str, Any] | None = None,
    artifacts: bool = True,
) -> dict[str, Any]:
    """Audit a COCO file: ``flag`` how many top suspects (a share of the scored boxes, or a count;
    default :class:`snapper.config.AuditConfig`'s); ``overrides``: any AuditConfig field, batch-snap
    settings under ``batch`` (``{"min_px": 2, "batch": {"snap": {"device": "cpu"}}}``).
    Returns the ``audit.json`` summary."""
    cfg = override(override(AuditConfig(), overrides), {"flag": flag} if flag is not None else None)
    ann, images, out = str(resolve(ann_file)), str(resolve(images_dir)), str(resolve(out_dir))
    check_folders(images, out)
    checkpoint = str(resolve_model(model))  # once: every chunk uses the same weights
    cfg_d = to_dict(cfg)
    done = snap_task(ann, images, out, checkpoint, cfg_d)
    summary = score_task(done, images, cfg_d)
    get_run_logger().info("%s: %d scored, %d not scored, %d flagged -> %s", ann, summary["n_scored"],
                          summary["n_unscored"], summary["n_flagged"], out)
    if artifacts:
        publish(resolve(ann_file).stem, out, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.audit", description="Run the audit-dataset flow once.")
    ap.add_argument("ann_file")
    ap.add_argument("images_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--flag", type=float)
    a = ap.parse_args(argv)
    res = audit_dataset_flow(a.ann_file, a.images_dir, a.out_dir, a.model, a.flag)
    print(json.dumps({k: res[k] for k in ("n_annotations", "n_scored", "n_unscored", "n_flagged")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
