"""Flow ``adapt-snapper``: fine-tune a model onto a team's gold boxes, compare it with the base
on gold images it never saw, register it (champion only when better). The library's stages
(:mod:`snapper.training.adapt`) as tasks, with Prefect artifacts: the comparison table, the
annotators' noise report, links to MLflow.

    prefect deployment run 'adapt-snapper/default' --param gold=data/raccoon/annotations.json \\
        --param images=data/raccoon/images --param name=snapper-raccoon --param rough=data/raccoon/rough.json

Relative paths resolve against ``$SNAPPER_HOME`` (or the working directory), like every flow.
Re-running resumes: shards are reused, trainings resume or return, a run is registered once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import artifact_key, flatten, jsonable, library_logs_to, mlflow_ui, resolve
from snapper.config import AdaptConfig
from snapper.mlops import tracking
from snapper.models.reference import DEFAULT_MODEL
from snapper.training import adapt as A


@task(name="prepare-gold")
def prepare_task(cfg: AdaptConfig) -> dict[str, Any]:
    with library_logs_to(get_run_logger()):
        return A.prepare(cfg).to_json()


@task(name="fine-tune")
def adapted_task(cfg: AdaptConfig, prep: dict[str, Any]) -> dict[str, Any]:
    with library_logs_to(get_run_logger()):
        return A.train_adapted(cfg, A.Prepared(**prep))


@task(name="train-gold-only")
def gold_only_task(cfg: AdaptConfig, prep: dict[str, Any]) -> dict[str, Any]:
    with library_logs_to(get_run_logger()):
        return A.train_gold_only(cfg, A.Prepared(**prep))


@task(name="compare-and-register")
def compare_task(cfg: AdaptConfig, prep: dict[str, Any], adapted: dict[str, Any],
                 gold_only: dict[str, Any] | None) -> dict[str, Any]:
    with library_logs_to(get_run_logger()):
        return A.compare_and_register(cfg, A.Prepared(**prep), adapted, gold_only)


def _path(p: str | None) -> str | None:
    return None if p is None else str(resolve(p))


def _as_sets(overrides: dict[str, Any] | None) -> list[str]:
    """``{"lr": 1e-4}`` (nested or dotted) -> ``["lr=0.0001"]``, the ``--set`` form AdaptConfig keeps."""
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in flatten(overrides).items()]


def publish(res: dict[str, Any], prep: dict[str, Any]) -> None:
    """The comparison and the noise report as artifacts, with links to the MLflow run and version."""
    ui = mlflow_ui()
    run_id = res["trainings"][A.ADAPTED]["run_id"]
    reg = res["registered"]
    lines = [f"# adapt-snapper: {res['name']} from `{res['base']}`", "",
             "- splits: " + ", ".join(f"{s} {c['images']} images / {c['boxes']} boxes" for s, c in res["splits"].items()),
             f"- trained on: {'the measured noise' if res['jitter'].get('mode') == 'empirical' else 'the paper jitter'}",
             f"- rehearsal: {len(prep.get('replay') or [])} shards beside the gold" if prep.get("replay") else
             "- rehearsal: none (nothing to replay, or turned off)",
             f"- {A.scores_line(res)}"]
    if reg:
        link = tracking.model_version_link(reg["name"], reg["version"], ui)
        verdict = "**champion**" if reg["champion"] else "not champion"
        lines.append(f"- registered: [{reg['name']} version {reg['version']}]({link}) {verdict}: {reg['champion_check']}"
                     if link else f"- registered: {reg['name']} version {reg['version']} {verdict}: {reg['champion_check']}")
    link = tracking.run_link(run_id, ui)
    lines += [f"- MLflow run: {f'[{run_id}]({link})' if link else run_id}", "", res["table_md"]]
    key = artifact_key("snapper-adapt", res["name"])
    create_markdown_artifact(key=key, markdown="\n".join(lines),
                             description=f"{res['name']}: every model on the same held-out gold boxes (percent)")
    create_table_artifact(key=f"{key}-rows", table=res["rows"], description="Table 1 rows: method x size bucket")
    if prep.get("noise_text"):
        create_markdown_artifact(key=f"{key}-noise", markdown=(
            f"# The annotators' noise ({res['name']}, train split)\n\n```\n{prep['noise_text']}\n```\n\n"
            f"Pairs: `{prep['noise_file']}`; histograms: `{Path(prep['noise_file']).parent / 'noise.png'}`"),
            description="rough vs gold boxes per edge, in % of the object's size")


@flow(name="adapt-snapper")
def adapt_snapper(
    gold: str,
    images: str,
    name: str,
    rough: str | None = None,
    base: str = DEFAULT_MODEL,
    steps: int | None = None,
    noise: str = "auto",
    gold_only: bool = True,
    register_model: bool = True,
    seed: int = 0,
    select_fraction: float = AdaptConfig.select_fraction,
    report_fraction: float = AdaptConfig.report_fraction,
    overrides: dict[str, Any] | None = None,
    out_dir: str | None = None,
    device: str = "auto",
    replay: list[str] | None = None,
    replay_share: float = AdaptConfig.replay_share,
) -> dict[str, Any]:
    """Check -> split + shard + noise report -> fine-tune (+ gold-only) -> compare + register.
    ``replay``: shards trained on beside the gold (``["base"]``: the base's own training shards;
    None: those when they are all files here; ``[]``: none)."""
    base_ref = base if base.startswith(("models:/", "runs:/")) else str(resolve(base))
    cfg = AdaptConfig(gold=_path(gold) or "", images=_path(images) or "", name=name, rough=_path(rough), base=base_ref,
                      out_dir=_path(out_dir or f"runs/adapt/{name}"), select_fraction=select_fraction,
                      report_fraction=report_fraction, seed=seed, steps=steps, noise=noise, gold_only=gold_only,
                      register=register_model, device=device, overrides=_as_sets(overrides),
                      replay=None if replay is None else [r if r == A.REPLAY_BASE else (_path(r) or r) for r in replay],
                      replay_share=replay_share)
    prep = prepare_task(cfg)
    adapted = adapted_task(cfg, prep)
    gold_model = gold_only_task(cfg, prep) if gold_only else None
    res = compare_task(cfg, prep, adapted, gold_model)
    publish(res, prep)
    get_run_logger().info("%s", A.scores_line(res))
    return jsonable(res)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.adapt", description="Run the adapt-snapper flow once.")
    ap.add_argument("gold")
    ap.add_argument("images")
    ap.add_argument("--name", required=True)
    ap.add_argument("--rough")
    ap.add_argument("--base", default=DEFAULT_MODEL)
    ap.add_argument("--steps", type=int)
    a = ap.parse_args(argv)
    res = adapt_snapper(gold=a.gold, images=a.images, name=a.name, rough=a.rough, base=a.base, steps=a.steps)
    print(res["table_md"])
    print(A.scores_line(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
