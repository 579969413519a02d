"""Adapting to a user's data (issue 22): does fine-tuning the COCO champion on a few gold images
help off COCO, and does training on the annotators' measured noise beat the paper's jitter?

Sets (rough boxes made here, seeded per annotation id, and given to `adapt` as ``--rough``):

* ``raccoon``, ``kangaroo``: the shared web sets (boxes drawn looser than COCO's); rough boxes =
  the paper's jitter of the gold. Half the images (seeded) are the report split; the gold
  images are drawn from the other half.
* ``coco-bias``: the three shared COCO folders; rough boxes 8% larger than the gold, shifted up
  by 4% of the box height, plus uniform noise of half the paper's (an annotator's habit).
* ``coco-2x``: the same images, rough boxes with twice the paper's jitter (shift 0.2, scale
  0.8-1.2).
  For both COCO sets the report split is ``coco_real.py``'s report split (images neither the
  champion nor any selection saw); the gold images come from the champion's training images
  (it saw them with the paper's jitter on their true boxes, not with this noise).

Per set and number of gold images N (train 80% / selection 20% of them): rows ``identity``
(the rough boxes), ``champion`` (the COCO ``cpu``-preset Lite0, 500 steps, made by
``coco_real.py``'s recipe), ``gold-only`` (the champion's architecture from ImageNet on the gold
alone, measured noise), ``ft-paper`` (fine-tuned from the champion on the paper's jitter) and
``ft-measured`` (fine-tuned on the noise measured on the train split's rough/gold pairs), all
on the same report boxes with the annotators' rough boxes. Fine-tuning is ``snapper adapt``'s
(``finetune`` preset, 300 steps) through :mod:`snapper.training.adapt`.

    .venv/bin/python experiments/adapt.py                      # every set at N = 50
    .venv/bin/python experiments/adapt.py --sets raccoon --gold 25 50 100
    .venv/bin/python experiments/adapt.py --sets raccoon kangaroo --variant ema --ema-decay 0.99
    .venv/bin/python experiments/adapt.py --sets raccoon kangaroo --variant rehearsal
    .venv/bin/python experiments/adapt.py --sets raccoon kangaroo --variant rehearsal-ema --ema-decay 0.99
    .venv/bin/python experiments/adapt.py --sets raccoon kangaroo --variant rehearsal-ema-draws --ema-decay 0.99

``--variant ema``: one more fine-tune per cell, ``ft-measured`` with an exponential moving
average of the weights (``TrainConfig.ema_decay``, passed as an override; validation and the
checkpoint are the average); ``--variant rehearsal``: ``ft-measured`` with the champion's COCO
training shards streamed alongside the gold (about half the crops; see :func:`variant_cell`);
``--variant rehearsal-ema``: both; ``--variant rehearsal-ema-draws``: both, with the checkpoint
chosen on :data:`VAL_DRAWS` jitter draws of every selection box (``data.val_draws``).
Scored on the same report boxes as ``identity``, ``champion`` and ``ft-measured`` (those
checkpoints are reused, not retrained). Writes
``experiments/results/adapt/variants/<set>-n<N>-<variant>/`` and ``variants.md``; ``report.md``
is left as it is.

Resumable (finished trainings are reused). Writes ``experiments/results/adapt/`` (``report.md``,
one folder per cell with its Table 1 by size and ``cell.json`` with wall times).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coco_real import DATASETS, make_shards  # noqa: E402
from coco_real import run as train_coco  # noqa: E402

from snapper.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from snapper.config import AdaptConfig, JitterConfig  # noqa: E402
from snapper.data.coco import load_coco  # noqa: E402
from snapper.data.shards import split_by_image  # noqa: E402
from snapper.evaluation.evaluate import evaluate  # noqa: E402
from snapper.evaluation.metrics import format_table  # noqa: E402
from snapper.geometry import annotation_rng, jitter_by_annotation, xywh_to_xyxy, xyxy_to_xywh  # noqa: E402
from snapper.training import adapt as A  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WEB = ("raccoon", "kangaroo")
COCO_SETS = ("coco-bias", "coco-2x")
ROWS = ("identity", "champion", "gold-only", "ft-paper", "ft-measured")
ID_OFFSET = 10_000_000  # merged COCO folders: ids of folder k are offset by k * this
# The rows of report.md (and ft-measured beside every variant) are the fine-tune as it was before
# EMA and rehearsal became `snapper adapt`'s defaults (session 25): pinned off, so reruns match.
PLAIN = ["ema_decay=null"]


def _order(ids: list[int], seed: int) -> list[int]:
    return sorted(ids, key=lambda i: hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest())


def merged_coco(data: Path, out: Path) -> tuple[Path, dict[str, list[int]]]:
    """The three COCO folders as one file (file names relative to ``data``, ids offset per
    folder) and coco_real.py's splits of it (train / select / report image ids)."""
    merged: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
    splits: dict[str, list[int]] = {"train": [], "select": [], "report": []}
    cats = set()
    for k, ds in enumerate(DATASETS):
        d = json.loads((data / ds / "annotations.json").read_text())
        off = k * ID_OFFSET
        for im in d["images"]:
            merged["images"].append({**im, "id": im["id"] + off, "file_name": f"{ds}/images/{im['file_name']}"})
        for a in d["annotations"]:
            merged["annotations"].append({**a, "id": a["id"] + off, "image_id": a["image_id"] + off, "category_id": 1})
        index = load_coco(data / ds / "annotations.json", data / ds / "images")
        train_ids, held = split_by_image(index, 0.2, seed=0)
        select_ids, report_ids = split_by_image(index.subset(held), 0.5, seed=1)
        for name, ids in (("train", train_ids), ("select", select_ids), ("report", report_ids)):
            splits[name] += [i + off for i in ids]
        cats.add(1)
    merged["categories"] = [{"id": 1, "name": "object"}]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "gold.json", merged)
    return out / "gold.json", splits


def rough_boxes(gold: Path, out: Path, kind: str) -> Path:
    """The annotators' boxes of every gold box (same annotation ids), seeded per annotation id."""
    d = json.loads(gold.read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in d["images"]}
    for a in d["annotations"]:
        w, h = sizes[a["image_id"]]
        b = xywh_to_xyxy(np.asarray(a["bbox"], float)[None])
        if kind == "paper":
            r = jitter_by_annotation(b, [a["id"]], w, h, JitterConfig(), seed=7)
        elif kind == "2x":
            r = jitter_by_annotation(b, [a["id"]], w, h, JitterConfig(shift=0.2, scale_min=0.8, scale_max=1.2), seed=7)
        else:  # bias: 8% larger, 4% of the height up, plus half the paper's noise
            rng = annotation_rng(int(a["id"]), 7)
            bw, bh = b[0, 2] - b[0, 0], b[0, 3] - b[0, 1]
            cx = (b[0, 0] + b[0, 2]) / 2 + rng.uniform(-0.05, 0.05) * bw
            cy = (b[0, 1] + b[0, 3]) / 2 - 0.04 * bh + rng.uniform(-0.05, 0.05) * bh
            sw, sh = 1.08 * bw * rng.uniform(0.95, 1.05), 1.08 * bh * rng.uniform(0.95, 1.05)
            r = np.array([[cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2]])
        r[:, [0, 2]] = r[:, [0, 2]].clip(0, w)
        r[:, [1, 3]] = r[:, [1, 3]].clip(0, h)
        a["bbox"] = [round(float(v), 2) for v in xyxy_to_xywh(r)[0]]
    atomic_write_json(out / f"rough-{kind}.json", d)
    return out / f"rough-{kind}.json"


def dataset(name: str, data: Path, work: Path) -> tuple[Path, Path, Path, list[int], list[int]]:
    """(gold file, images root, rough file, gold pool image ids in draw order, report image ids)."""
    if name in WEB:
        gold, images = data / name / "annotations.json", data / name / "images"
        ids = _order([im["id"] for im in json.loads(gold.read_text())["images"]], seed=0)
        half = len(ids) // 2
        pool, report = ids[:min(100, half)], ids[half:]
        return gold, images, rough_boxes(gold, work / name, "paper"), pool, report
    gold, splits = merged_coco(data, work / "coco")
    kind = {"coco-bias": "bias", "coco-2x": "2x"}[name]
    return gold, data, rough_boxes(gold, work / "coco", kind), _order(splits["train"], seed=0), splits["report"]


def gold_splits(name: str, n: int, data: Path, work: Path) -> tuple[Path, Path, Path, dict[str, list]] | None:
    """The set's gold, images and rough files and its splits for N gold images (80% train / 20%
    selection, the report split fixed); None when the set has fewer than N outside its report split."""
    gold, images, rough, pool, report = dataset(name, data, work)
    if n > len(pool):
        print(f"{name}: only {len(pool)} gold images outside its report split; N={n} skipped", flush=True)
        return None
    n_select = max(1, round(0.2 * n))
    return gold, images, rough, {"train": pool[n_select:n], "select": pool[:n_select], "report": report}


def cell(name: str, n: int, steps: int, champion: str, data: Path, work: Path, out: Path) -> dict[str, Any] | None:
    """One set x N: the two fine-tunes and the gold-only run, then every row on the report split."""
    setup = gold_splits(name, n, data, work)
    if setup is None:
        return None
    gold, images, rough, splits = setup
    report, n_select = splits["report"], len(splits["select"])
    models: dict[str, str] = {"champion": champion}
    seconds: dict[str, float] = {}
    prep = None
    for noise in ("measured", "paper"):
        cfg = AdaptConfig(gold=str(gold), images=str(images), name=f"exp-{name}-{n}", rough=str(rough), base=champion,
                          out_dir=str(work / name / f"n{n}" / noise), steps=steps, noise=noise, register=False,
                          device="cpu", overrides=["tracking.enabled=false", *PLAIN], replay=[])
        p = A.prepare(cfg, splits)
        prep = prep or p
        t = A.train_adapted(cfg, p)
        models[f"ft-{noise}"], seconds[f"ft-{noise}"] = t["checkpoint"], t["seconds"]
        if noise == "measured":
            g = A.train_gold_only(cfg, p)
            models["gold-only"], seconds["gold-only"] = g["checkpoint"], g["seconds"]
    assert prep is not None
    res = evaluate(models, A.report_eval_config(cfg, prep), out / f"{name}-n{n}" / "eval",
                   n_examples=0, plots=False)
    atomic_write_text(out / f"{name}-n{n}" / "summary.md", res.table_md)
    info = {"set": name, "gold_images": n, "train_images": len(splits["train"]), "select_images": n_select,
            "report_images": len(report), "splits": prep.counts, "steps": steps, "train_seconds": seconds,
            "noise": prep.noise, "rows": res.summary[res.summary["size"] == "all"].to_dict(orient="records")}
    atomic_write_json(out / f"{name}-n{n}" / "cell.json", json.loads(json.dumps(info, default=float)), indent=2)
    return info


VARIANT_ROWS = ("identity", "champion", "ft-measured")
VARIANTS = ("ema", "rehearsal", "rehearsal-ema", "rehearsal-ema-draws")


VAL_DRAWS = 10  # --variant rehearsal-ema-draws: jitter draws per selection box (data.val_draws)
REHEARSAL_GOLD_SHARE = 0.6  # share of shard draws that are the gold shard (~half the crops: see variant_cell)


def variant_cell(name: str, n: int, steps: int, champion: str, data: Path, work: Path, out: Path,
                 variant: str, ema_decay: float, coco_train: list[str]) -> dict[str, Any] | None:
    """One set x N with one variant of ``ft-measured`` next to the reused ``ft-measured``
    fine-tune, on the same report boxes. ``ema``: the weight average at ``ema_decay``.
    ``rehearsal-ema``: both. ``rehearsal``: ``snapper adapt --replay`` with the champion's own
    COCO training shards (``coco_train``, 16 images each; never the web sets' shards) and
    ``replay_share`` 1 - ``REHEARSAL_GOLD_SHARE``: the gold train shard is listed often enough
    to be drawn ``REHEARSAL_GOLD_SHARE`` of the time (one gold shard of ~40 images of ~1 box
    gives ~43 crops a draw, a COCO shard 16 images x 4 boxes = 64, so about half the crops are
    gold); every box gets the measured noise."""
    setup = gold_splits(name, n, data, work)
    if setup is None:
        return None
    gold, images, rough, splits = setup
    row = f"ft-measured-{variant}"
    ema = variant in ("ema", "rehearsal-ema", "rehearsal-ema-draws")
    extra = [f"ema_decay={ema_decay}"] if ema else PLAIN
    variant_dir = f"measured-{variant}-{ema_decay:g}" if ema else f"measured-{variant}"
    if variant.endswith("-draws"):  # the checkpoint chosen on VAL_DRAWS jitter draws of each selection box
        extra.append(f"data.val_draws={VAL_DRAWS}")
        variant_dir += f"-{VAL_DRAWS}"
    models: dict[str, str] = {"champion": champion}
    seconds: dict[str, float] = {}
    prep = None
    for label, folder, overrides in (("ft-measured", "measured", PLAIN), (row, variant_dir, extra)):
        replay = list(coco_train) if label == row and variant.startswith("rehearsal") else []
        cfg = AdaptConfig(gold=str(gold), images=str(images), name=f"exp-{name}-{n}", rough=str(rough), base=champion,
                          out_dir=str(work / name / f"n{n}" / folder), steps=steps, noise="measured", register=False,
                          device="cpu", overrides=["tracking.enabled=false", *overrides], replay=replay,
                          replay_share=1 - REHEARSAL_GOLD_SHARE)
        p = A.prepare(cfg, splits)
        prep = prep or p
        t = A._trained(A.adapted_config(cfg, p))
        models[label], seconds[label] = t["checkpoint"], t["seconds"]
    assert prep is not None
    cell_dir = out / "variants" / f"{name}-n{n}-{variant}"
    res = evaluate(models, A.report_eval_config(cfg, prep), cell_dir / "eval", n_examples=0, plots=False)
    atomic_write_text(cell_dir / "summary.md", res.table_md)
    info = {"set": name, "gold_images": n, "variant": variant, "ema_decay": ema_decay if ema else None,
            "val_draws": VAL_DRAWS if variant.endswith("-draws") else None,
            "steps": steps,
            "splits": prep.counts, "train_seconds": seconds,
            "rows": res.summary[res.summary["size"] == "all"].to_dict(orient="records")}
    atomic_write_json(cell_dir / "cell.json", json.loads(json.dumps(info, default=float)), indent=2)
    return info


def cell_tables(c: dict[str, Any], order: "list[str] | tuple[str, ...]") -> list[str]:
    """A finished cell's Table 1 rows in ``order`` and the wall times of its trainings."""
    df = pd.DataFrame(c["rows"])
    df["order"] = df["method"].map({m: i for i, m in enumerate(order)})
    return [format_table(df.sort_values("order").drop(columns="order")),
            "wall time on this machine (s): " + ", ".join(f"{k} {v:.0f}" for k, v in c["train_seconds"].items()) + "\n"]


def variants_report(out: Path) -> str:
    """Every finished variant cell as markdown (Table 1 overall; wall times of the fine-tunes)."""
    parts = ["# Variants of ft-measured (experiments/adapt.py --variant)\n",
             ("Report splits only; percent; same columns as report.md. `ft-measured` is the committed "
              "fine-tune (reused); its wall time here is the resume check, see report.md for its training time. "
              "Commands:\n"),
             "    .venv/bin/python experiments/adapt.py --sets raccoon kangaroo --variant ema --ema-decay 0.99",
             "    .venv/bin/python experiments/adapt.py --sets raccoon kangaroo --variant rehearsal",
             "    .venv/bin/python experiments/adapt.py --sets raccoon kangaroo --variant rehearsal-ema --ema-decay 0.99",
             ("    .venv/bin/python experiments/adapt.py --sets raccoon kangaroo --variant rehearsal-ema-draws "
              "--ema-decay 0.99\n")]
    def order(f: Path) -> tuple[int, int]:  # variant, then the deciding set (raccoon) before the confirming one
        c = json.loads(f.read_text())
        return VARIANTS.index(c["variant"]), WEB.index(c["set"]) if c["set"] in WEB else len(WEB)

    for f in sorted((out / "variants").glob("*/cell.json"), key=order):
        c = json.loads(f.read_text())
        s = c["splits"]
        settings = [f"{k} {c[k]}" for k in ("ema_decay", "val_draws") if c.get(k)]
        what = f" ({', '.join(settings)})" if settings else ""
        parts.append(f"## {c['set']}, {c['gold_images']} gold images, variant {c['variant']}{what}; "
                     f"{s['train']['boxes']} train + {s['select']['boxes']} selection "
                     f"boxes; report: {s['report']['images']} images, {s['report']['boxes']} boxes\n")
        parts += cell_tables(c, [*VARIANT_ROWS, f"ft-measured-{c['variant']}"])
    old = (out / "variants.md").read_text() if (out / "variants.md").is_file() else ""
    if READING in old:  # the hand-written reading below the tables survives a rerun
        parts.append(old[old.index(READING):].rstrip("\n") + "\n")
    return "\n".join(parts)


READING = "## Reading"


def report(out: Path) -> str:
    """All finished cells as one markdown report (Table 1 overall per cell, wall times)."""
    parts = ["# Adapting to a user's data (experiments/adapt.py)\n",
             "Report splits only (images no training or checkpoint selection saw); percent; "
             "`worse >0.1 IoU` = share of boxes whose IoU with the truth fell more than 0.1 below the rough box's.\n"]
    for f in sorted(out.glob("*/cell.json"), key=lambda p: (p.parent.name.split("-n")[0], int(p.parent.name.split("-n")[1]))):
        c = json.loads(f.read_text())
        s = c["splits"]
        parts.append(f"## {c['set']}, {c['gold_images']} gold images ({s['train']['boxes']} train + "
                     f"{s['select']['boxes']} selection boxes); report: {s['report']['images']} images, "
                     f"{s['report']['boxes']} boxes\n")
        parts += cell_tables(c, ROWS)
    return "\n".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--sets", nargs="+", default=[*WEB, *COCO_SETS], choices=[*WEB, *COCO_SETS])
    p.add_argument("--gold", nargs="+", type=int, default=[50], help="numbers of gold images")
    p.add_argument("--steps", type=int, default=300, help="steps of each fine-tune and gold-only run")
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "adapt"))
    p.add_argument("--variant", choices=VARIANTS, default=None,
                   help="instead of the full cells, ft-measured with this change next to ft-measured (variants.md)")
    p.add_argument("--ema-decay", type=float, default=0.99, help="--variant ema / rehearsal-ema: TrainConfig.ema_decay")
    args = p.parse_args()
    data, out, work = Path(args.data), Path(args.out), REPO / "runs" / "adapt-exp"
    if not (data / "raccoon" / "annotations.json").is_file():
        raise SystemExit(f"{data}: the shared data folders are not there; nothing to do")
    t = time.time()
    urls = make_shards(data, REPO / "shards" / "coco-real")
    champion = train_coco("lite0", 500, urls, REPO / "runs" / "adapt-champion")
    print(f"champion: {champion} ({time.time() - t:.0f} s)", flush=True)
    if args.variant:
        for n in args.gold:
            for name in args.sets:
                info = variant_cell(name, n, args.steps, champion, data, work, out, args.variant, args.ema_decay,
                                    urls["train"])
                if info is not None:
                    print(f"{name} n={n} {args.variant}: {info['train_seconds']}", flush=True)
                    atomic_write_text(out / "variants.md", variants_report(out))
        print(variants_report(out))
        return
    for n in args.gold:
        for name in args.sets:
            info = cell(name, n, args.steps, champion, data, work, out)
            if info is None:
                continue
            print(f"{name} n={n}: {info['train_seconds']}", flush=True)
            atomic_write_text(out / "report.md", report(out))
    print(report(out))


if __name__ == "__main__":
    main()
