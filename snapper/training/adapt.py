"""Adapting a model to a team's own data: a few hundred gold boxes (a reviewer's corrections),
optionally the annotators' rough boxes of the same objects, and a base model (the champion).

Why these steps: the COCO champion barely helps off COCO, and a model trained on a few gold
images from ImageNet throws some boxes far off (issue 22's measurements), so the model is
fine-tuned *from* the base, on rough boxes drawn like the annotators' (their measured noise
when rough boxes are given), and judged on gold images nothing trained or selected on. The
new version becomes its name's champion only when it beats the base there (and the name's
current champion, when it has one): a team never snaps with a model that is worse on their
own data than the one they had.

Stages (the ``adapt-snapper`` flow runs each as a task; :func:`adapt` runs them in one call):
:func:`prepare` (check the input, split the gold by image, shard, noise report; with
``replay``, the shards trained on beside the gold: rehearsal of what the base knew),
:func:`train_adapted` and :func:`train_gold_only`, then :func:`compare_and_register`.
Re-running resumes: shards are reused, trainings resume or return, a run is registered once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapper.atomic import atomic_write_json
from snapper.config import MIN_ADAPT_TRAIN_IMAGES, AdaptConfig, EvalConfig, JitterConfig, SnapSettings, TrainConfig
from snapper.data.coco import CocoIndex, load_coco
from snapper.data.manifest import expand_urls, is_local, local_path, shard_urls
from snapper.data.shards import shard_index
from snapper.errors import UserInputError
from snapper.evaluation.evaluate import IDENTITY
from snapper.evaluation.noise import Pairs, format_report, noise_report, pair_boxes, write_noise_report
from snapper.lineage import read_lineage, shard_lineage
from snapper.mlops import tracking
from snapper.mlops.lifecycle import CHAMPION_METHOD, find_champion, register_adapted
from snapper.models.checkpoint import read_config
from snapper.models.reference import is_registry_ref, pin_model_ref, resolve_model
from snapper.training.init_from import with_parent_model
from snapper.training.loop import train
from snapper.training.presets import PRESETS, build_config
from snapper.training.publish import evaluate_models

log = logging.getLogger(__name__)

ADAPTED, BASE, GOLD_ONLY = "adapted", "base", "gold-only"  # the method names of the comparison
EXPERIMENT = "snapper-adapt"  # the MLflow experiment of adapt runs
SPLITS = ("train", "select", "report")
MIN_PAIRED_SHARE = 0.5  # fewer gold boxes with a rough partner: the files do not describe the same objects
RESULT_FILE = "adapt.json"
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][\w.\-]*")
REPLAY_BASE = "base"  # AdaptConfig.replay: the shards the base model was trained on (its lineage)


class AdaptInputError(UserInputError, ValueError):
    """Gold, images, rough boxes or base that `adapt` cannot work with (one line naming it)."""


@dataclass
class Prepared:
    """What :func:`prepare` made, as JSON (a Prefect task result): the shard URLs per split,
    the pinned base, the rough boxes of the gold by gold annotation id, the noise report."""

    out_dir: str
    base: str
    base_checkpoint: str
    urls: dict[str, list[str]]
    counts: dict[str, dict[str, int]]
    rough_file: str | None = None
    noise_file: str | None = None
    noise: dict[str, Any] | None = None
    noise_text: str | None = None
    jitter: dict[str, Any] = field(default_factory=dict)
    replay: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def out_dir_of(cfg: AdaptConfig) -> Path:
    return Path(cfg.out_dir or f"runs/adapt/{cfg.name}")


# ---------------------------------------------------------------------------- checks


def check_gold(cfg: AdaptConfig) -> CocoIndex:
    """The gold index; refuses an empty gold file and images that are missing or unreadable."""
    if not MODEL_NAME_RE.fullmatch(cfg.name):
        raise AdaptInputError(f"--name {cfg.name!r}: a registered model name of letters, digits, '.', '_' or '-' "
                              "(e.g. snapper-shelves)")
    index = load_coco(cfg.gold, cfg.images)
    bad = [s for s in index.skipped if s["annotation_id"] is None]
    if bad:
        raise AdaptInputError(f"{cfg.gold}: {len(bad)} of {len(index.input_annotations)} images cannot be used "
                              f"(first: {bad[0]['reason']}: {bad[0]['detail']}); fix or remove them first")
    if index.num_boxes == 0:
        raise AdaptInputError(f"{cfg.gold}: no usable gold boxes (non-crowd, inside the image, >= 1 px)")
    return index


def check_rough(cfg: AdaptConfig, index: CocoIndex) -> Pairs | None:
    """Rough/gold pairs, refused when under half of the gold boxes have a rough partner."""
    if cfg.rough is None:
        if cfg.noise == "measured":
            raise AdaptInputError("noise=measured needs the annotators' rough boxes (--rough ROUGH.json)")
        return None
    pairs = pair_boxes(cfg.rough, cfg.gold)
    if len(pairs.table) < MIN_PAIRED_SHARE * index.num_boxes:
        raise AdaptInputError(f"{cfg.rough} and {cfg.gold} do not describe the same boxes: only "
                              f"{len(pairs.table)} of {index.num_boxes} gold boxes have a rough box "
                              f"(matched by {pairs.matched_by})")
    return pairs


def check_base(cfg: AdaptConfig) -> tuple[str, Path]:
    """(the base reference pinned to a version, its checkpoint folder), before any work."""
    ref = pin_model_ref(cfg.base) if is_registry_ref(cfg.base) else cfg.base
    return ref, resolve_model(ref)


def base_shards(base_checkpoint: Path) -> tuple[list[str], list[str]]:
    """(the shards the base was trained on, by its lineage: :func:`snapper.lineage.read_lineage`;
    those of them that are local files missing here)."""
    recorded = ((read_lineage(base_checkpoint) or {}).get("train") or {}).get("shards") or []
    return recorded, [u for u in recorded if not is_local(u) or not Path(local_path(u)).is_file()]


def check_replay(cfg: AdaptConfig, base_checkpoint: Path) -> list[str]:
    """The replay shards as URLs, each local one present: ``base`` reads the base's training
    shards from its lineage, so they must still be where it was trained from; refused before any
    work otherwise. ``None`` (the default): the base's shards when every one is a file here, else
    none (one log line says why)."""
    if cfg.replay is None:
        recorded, missing = base_shards(base_checkpoint)
        if recorded and not missing:
            return recorded
        log.info("adapt %s: no rehearsal: %s", cfg.name, "the base records no training shards" if not recorded else
                 f"{len(missing)} of the {len(recorded)} shards the base was trained on are not files here "
                 f"(first: {missing[0]}); name some with --replay SHARDS")
        return []
    urls: list[str] = []
    for item in cfg.replay:
        if item != REPLAY_BASE:
            try:
                urls += expand_urls(item)
            except (UserInputError, ValueError) as e:
                raise AdaptInputError(f"--replay {item}: {e}") from None
            continue
        recorded, missing = base_shards(base_checkpoint)
        missing = [u for u in missing if is_local(u)]  # remote shards are streamed as in training
        if not recorded:
            raise AdaptInputError(f"--replay base: {cfg.base} does not record the shards it was trained on; "
                                  "name them instead (--replay SHARDS...)")
        if missing:
            raise AdaptInputError(f"--replay base: {len(missing)} of the {len(recorded)} shards {cfg.base} was trained "
                                  f"on are not on this machine (first: {missing[0]}); name others (--replay SHARDS...)")
        urls += recorded
    return urls


def mixed_shards(gold: list[str], replay: list[str], replay_share: float) -> list[str]:
    """The gold shards listed often enough beside ``replay`` that about ``1 - replay_share`` of
    the training stream's shard draws are gold (a few gold shards next to many replay shards
    would otherwise be drawn almost never)."""
    if not replay:
        return list(gold)
    repeat = max(1, round((1 - replay_share) / replay_share * len(replay) / max(1, len(gold))))
    return list(gold) * repeat + list(replay)


# ---------------------------------------------------------------------------- split + shards


def split_gold(index: CocoIndex, cfg: AdaptConfig) -> dict[str, list[int]]:
    """Images with boxes, ordered by a seeded hash of their id, cut by count into report,
    selection and train (each held-out split gets at least one image); refused when fewer than
    :data:`MIN_ADAPT_TRAIN_IMAGES` would be left to train on."""
    ids = [r.image_id for r in index.images if any(not a["iscrowd"] for a in r.annotations)]
    ids.sort(key=lambda i: hashlib.blake2b(f"{cfg.seed}:{i}".encode(), digest_size=8).digest())
    n = len(ids)
    n_report = max(1, round(cfg.report_fraction * n))
    n_select = max(1, round(cfg.select_fraction * n))
    if n - n_report - n_select < MIN_ADAPT_TRAIN_IMAGES:
        raise AdaptInputError(f"{cfg.gold}: {n} gold images with boxes are too few to hold any out: adapt needs "
                              f"{n_report} for the report, {n_select} for checkpoint selection and at least "
                              f"{MIN_ADAPT_TRAIN_IMAGES} to train on ({n_report + n_select + MIN_ADAPT_TRAIN_IMAGES})")
    return {"report": ids[:n_report], "select": ids[n_report:n_report + n_select],
            "train": ids[n_report + n_select:]}


def shard_splits(index: CocoIndex, splits: dict[str, list[int]], out: Path) -> tuple[dict[str, list[str]],
                                                                                       dict[str, dict[str, int]]]:
    """Each split as shards under ``out/shards`` (reused when up to date); URLs and counts."""
    urls, counts = {}, {}
    for split in SPLITS:
        m = shard_index(index, out / "shards", split, shard_size=64, image_ids=splits[split])
        urls[split] = shard_urls(out / "shards", split)
        counts[split] = {"images": m.counts["images"], "boxes": m.counts["boxes"]}
    return urls, counts


def write_rough_for_gold(pairs: Pairs, path: Path) -> Path:
    """The rough box of each paired gold box under the *gold* annotation id
    (``EvalConfig.rough_file``: the report split is scored on the annotators' own boxes)."""
    t = pairs.table
    anns = [{"id": int(g), "image_id": 0, "category_id": 1, "iscrowd": 0,
             "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}
            for g, x1, y1, x2, y2 in zip(t["gold_id"], t["rough_left"], t["rough_top"], t["rough_right"],
                                         t["rough_bottom"])]
    return atomic_write_json(path, {"images": [], "annotations": anns, "categories": []})


def train_pairs(pairs: Pairs, index: CocoIndex, train_ids: list[int]) -> Pairs:
    """The pairs of the train split's images only: the noise trained on is measured on them."""
    names = {r.file_name for r in index.images if r.image_id in set(train_ids)}
    t = pairs.table[pairs.table["file_name"].isin(names)].reset_index(drop=True)
    return Pairs(t, pairs.matched_by, pairs.unmatched_rough, pairs.unmatched_gold)


def prepare(cfg: AdaptConfig, splits: dict[str, list[int]] | None = None) -> Prepared:
    """Check everything (gold, images, rough, base) before any work; split (or take ``splits``,
    image ids per split: experiments fix them), shard, and measure the annotators' noise on
    the train split."""
    build_config("finetune", None, cfg.overrides or None)  # a bad --set is refused before anything runs
    index = check_gold(cfg)
    pairs = check_rough(cfg, index)
    base, base_ckpt = check_base(cfg)
    replay = check_replay(cfg, base_ckpt)
    splits = splits or split_gold(index, cfg)
    out = out_dir_of(cfg)
    urls, counts = shard_splits(index, splits, out)
    prep = Prepared(str(out), base, str(base_ckpt), urls, counts, replay=replay)
    if pairs is not None:
        prep.rough_file = str(write_rough_for_gold(pairs, out / "rough_for_gold.json"))
        context = read_config(base_ckpt)[0].context
        tp = train_pairs(pairs, index, splits["train"])
        if len(tp.table):
            files = write_noise_report(tp, out / "noise", context)
            prep.noise_file, prep.noise = str(files["pairs"]), noise_report(tp, context)
            prep.noise_text = format_report(prep.noise)
    measured = cfg.noise == "measured" or (cfg.noise == "auto" and prep.noise_file is not None)
    if measured and prep.noise_file is None:
        raise AdaptInputError(f"{cfg.rough}: no rough box pairs on the train split's images to measure the noise on")
    jitter = JitterConfig(mode="empirical", noise_file=prep.noise_file) if measured else JitterConfig()
    prep.jitter = dataclasses.asdict(jitter)
    return prep


# ---------------------------------------------------------------------------- trainings


def adapted_config(cfg: AdaptConfig, prep: Prepared) -> TrainConfig:
    """The fine-tune: the ``finetune`` preset (+ ``cfg.overrides``) from the base, on the train
    split (with the replay shards, when given) and the selection split for checkpoints, on the
    measured noise (or the paper's)."""
    tc = build_config("finetune", None, cfg.overrides or None)
    tracking_cfg = dataclasses.replace(tc.tracking, experiment=EXPERIMENT, registered_model=None,
                                       run_name=f"{cfg.name}-{ADAPTED}")
    data = dataclasses.replace(tc.data, train_shards=mixed_shards(prep.urls["train"], prep.replay, cfg.replay_share),
                               val_shards=prep.urls["select"])
    return dataclasses.replace(tc, init_from=prep.base, out_dir=str(Path(prep.out_dir) / ADAPTED),
                               device=cfg.device, steps=cfg.steps or tc.steps, data=data,
                               jitter=JitterConfig(**prep.jitter), tracking=tracking_cfg)


def gold_only_config(cfg: AdaptConfig, prep: Prepared) -> TrainConfig:
    """The same run without the base's weights: the base's architecture from its own first
    initialisation (ImageNet for the ``cpu`` preset), at the ``cpu`` preset's training rate, on
    the gold alone (no replay shards)."""
    tc = with_parent_model(adapted_config(cfg, prep))
    tracking_cfg = dataclasses.replace(tc.tracking, run_name=f"{cfg.name}-{GOLD_ONLY}")
    data = dataclasses.replace(tc.data, train_shards=prep.urls["train"])
    return dataclasses.replace(tc, init_from=None, lr=PRESETS["cpu"]["lr"], tracking=tracking_cfg, data=data,
                               out_dir=str(Path(prep.out_dir) / GOLD_ONLY))


def _trained(tc: TrainConfig) -> dict[str, Any]:
    t = time.perf_counter()
    result = train(tc)
    return {"checkpoint": result.best_checkpoint or result.last_checkpoint, "run_id": result.mlflow_run_id,
            "steps": result.steps, "seconds": round(time.perf_counter() - t, 1),
            "lineage": shard_lineage(tc.data.train_shards, tc.data.val_shards), "parent": tc.init_from}


def train_adapted(cfg: AdaptConfig, prep: Prepared) -> dict[str, Any]:
    """Fine-tune from the base (resumes; returns a finished run): checkpoint, run id, seconds."""
    return _trained(adapted_config(cfg, prep))


def train_gold_only(cfg: AdaptConfig, prep: Prepared) -> dict[str, Any]:
    return _trained(gold_only_config(cfg, prep))


# ---------------------------------------------------------------------------- compare + register


def report_eval_config(cfg: AdaptConfig, prep: Prepared) -> EvalConfig:
    """The report split, on the annotators' own rough boxes when given (else the paper's jitter)."""
    return EvalConfig(shards=prep.urls["report"], rough_file=prep.rough_file, snap=SnapSettings(device=cfg.device))


def compare_and_register(cfg: AdaptConfig, prep: Prepared, adapted: dict[str, Any],
                         gold_only: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every row on the same report boxes (identity, base, gold-only, the name's current
    champion, adapted); register the adapted model under ``cfg.name``; champion only when it
    beats the base and the current champion there. Writes ``<out_dir>/adapt.json``."""
    checkpoints = {ADAPTED: adapted["checkpoint"], BASE: prep.base_checkpoint}
    if gold_only:
        checkpoints[GOLD_ONLY] = gold_only["checkpoint"]
    champion = find_champion(cfg.name, adapted["run_id"]) if cfg.register and adapted["run_id"] else None
    if champion and champion.get("checkpoint"):
        checkpoints[CHAMPION_METHOD] = champion["checkpoint"]
    ev = evaluate_models(checkpoints, report_eval_config(cfg, prep), Path(prep.out_dir) / "eval", adapted["run_id"],
                         metric_prefix="report", method=ADAPTED)
    rivals = {BASE: f"base {prep.base}"}
    if champion:
        rivals[CHAMPION_METHOD] = f"{cfg.name} version {champion['version']} (champion)"
    registered = None
    if cfg.register:
        gold = Path(cfg.gold)  # e.g. "raccoon/annotations.json": the folder says which data
        lineage = {**adapted["lineage"], "dataset": f"{gold.parent.name}/{gold.name}", "parent": prep.base}
        registered = register_adapted(cfg.name, adapted["run_id"], adapted["checkpoint"], ev, rivals, lineage,
                                      ADAPTED, champion)
    result = {"name": cfg.name, "base": prep.base, "splits": prep.counts, "noise": prep.noise,
              "jitter": prep.jitter, "replay": prep.replay, "table_md": ev["table_md"], "rows": ev["rows"], "scores": ev["scores"],
              "trainings": {ADAPTED: adapted, **({GOLD_ONLY: gold_only} if gold_only else {})},
              "registered": registered, "eval_dir": ev["out_dir"], "mlflow_ui": tracking.server_url()}
    atomic_write_json(Path(prep.out_dir) / RESULT_FILE, json.loads(json.dumps(result, default=str)), indent=2)
    return result


def adapt(cfg: AdaptConfig) -> dict[str, Any]:
    """All stages in one call (``snapper adapt``): see the module doc."""
    prep = prepare(cfg)
    log.info("adapt %s: %s", cfg.name, ", ".join(f"{s} {c['images']} images / {c['boxes']} boxes"
                                                 for s, c in prep.counts.items()))
    if prep.replay:
        log.info("adapt %s: %d replay shards beside the gold (%.0f%% of the draws)", cfg.name, len(prep.replay),
                 100 * cfg.replay_share)
    adapted = train_adapted(cfg, prep)
    gold_only = train_gold_only(cfg, prep) if cfg.gold_only else None
    return compare_and_register(cfg, prep, adapted, gold_only)


def scores_line(result: dict[str, Any]) -> str:
    """One line: each row's score (mean of edge <1px and IoU>0.9) on the report split."""
    s = result["scores"]
    order = [m for m in (IDENTITY, BASE, CHAMPION_METHOD, GOLD_ONLY, ADAPTED) if m in s and s[m] is not None]
    return "score on the report split: " + ", ".join(f"{m} {s[m]:.1f}" for m in order)
