"""Flow ``review-snapper``: pull the reviews of a Label Studio project back as gold and, when
there is enough of it, adapt the model to it (the ``adapt-snapper`` flow, as a subflow).

    prefect deployment run 'review-snapper/default' --param out_dir=runs/batch/crowd --param project='doubtful boxes' \\
        --param images=data/images --param name=snapper-shelves

What ``snapper review pull`` does (:mod:`snapper.review.pull`), then ``adapt-snapper`` on
``OUT_DIR/review/gold.json`` with the rough boxes of ``rough.json`` when the gold holds at least
``min_gold`` boxes; below that the run only reports. The Label Studio backend's review loop
(:mod:`snapper.integrations.labelstudio_loop`) starts this deployment after every ``after``
submitted reviews. The Label Studio key comes from the worker's ``LABEL_STUDIO_API_KEY``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.adapt import adapt_snapper
from flows.common import artifact_key, library_logs_to, resolve
from snapper.integrations.labelstudio_api import LabelStudioClient
from snapper.models.reference import DEFAULT_MODEL
from snapper.review.pull import pull
from snapper.review.tasks import GOLD_JSON, ROUGH_JSON, load_batch_output

MIN_GOLD = 50  # boxes: fewer leave too little to split into train / selection / report by image


@task(name="pull-reviews")
def pull_task(out_dir: str, project: str, label_studio: str | None) -> dict[str, Any]:
    with library_logs_to(get_run_logger()):
        return pull(load_batch_output(out_dir), LabelStudioClient(label_studio), project)


def publish(summary: dict[str, Any], adapting: bool, min_gold: int) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items() if v)
    lines = [f"# review-snapper: {summary['project']}", "", f"- {summary['annotations']} annotations: {counts}",
             f"- gold: {summary['gold']} boxes on {summary['gold_images']} images; rough pairs {summary['rough_pairs']}",
             f"- {'adapting to it (adapt-snapper subflow)' if adapting else f'not adapting: under {min_gold} gold boxes'}"]
    lines += [f"- problem: {p}" for p in summary["problems"]]
    create_markdown_artifact(key=artifact_key("snapper-review", summary["project"]), markdown="\n".join(lines),
                             description="what the reviewers submitted, every annotation accounted for")


@flow(name="review-snapper")
def review_snapper(out_dir: str, project: str, images: str, name: str, label_studio: str | None = None,
                   base: str = DEFAULT_MODEL, min_gold: int = MIN_GOLD, adapt: bool = True,
                   steps: int | None = None) -> dict[str, Any]:
    """Pull -> report -> adapt-snapper on the gold (when ``adapt`` and at least ``min_gold`` boxes)."""
    out = resolve(out_dir)
    summary = pull_task(str(out), project, label_studio)
    adapting = adapt and summary["gold"] >= min_gold
    publish(summary, adapting, min_gold)
    result: dict[str, Any] = {"pull": summary, "adapt": None}
    if adapting:
        review = out / "review"
        result["adapt"] = adapt_snapper(gold=str(review / GOLD_JSON), images=images, name=name,
                                        rough=str(review / ROUGH_JSON) if summary["rough_pairs"] else None,
                                        base=base, steps=steps)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.review", description="Run the review-snapper flow once.")
    ap.add_argument("out_dir")
    ap.add_argument("--project", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--label-studio")
    ap.add_argument("--no-adapt", action="store_true")
    a = ap.parse_args(argv)
    res = review_snapper(a.out_dir, a.project, a.images, a.name, a.label_studio, adapt=not a.no_adapt)
    print(res["pull"]["counts"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
