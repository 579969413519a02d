"""``snapper review pull``: what reviewers submitted in Label Studio, back as COCO files that
account for every input annotation.

Each annotation of the batch output ends in exactly one status:

* not on the review list: ``not_flagged`` (the snapped box stands; a crowd box stays as it was);
* on it: ``confirmed`` (submitted unchanged, within :data:`MOVED_PX`), ``corrected`` (moved or
  relabelled), ``removed`` (its region deleted in the submitted annotation), ``skipped`` (the
  reviewer skipped the task), ``pending`` (nothing submitted yet, or the task is gone from the
  project), ``invalid_edit`` (the submitted region cannot be a box: rotated, unreadable; the
  snapped box stands) or ``not_pushable`` (``push`` could not show it, ``push.json`` says why);
* a region the reviewer drew anew is an ``added`` box with a new id (after the largest input id).

The latest submitted (not skipped) annotation of a task is the one read. A task's regions are
matched to its boxes by region id (:mod:`snapper.review.tasks`); a region with another id that
overlaps a box whose own region is gone (IoU >= :data:`REMATCH_IOU`) is that box redrawn.

Files, in ``OUT/review/`` and written atomically (pulling twice writes the same bytes):
``reviewed.json`` (every input annotation but removed ones, with the reviewed box, each with a
``snapper_review`` object, plus added boxes), ``gold.json`` (confirmed, corrected and added boxes:
what a person looked at, for ``snapper adapt``), ``rough.json`` (the annotators' rough boxes of
those gold boxes under the same ids: ``snapper adapt --rough``, ``snapper noise-report``),
``review.parquet`` (the accounting, one row per box) and ``pull.json`` (counts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from snapper.atomic import atomic_write_json, atomic_write_parquet
from snapper.errors import UserInputError
from snapper.geometry import paired_iou, xywh_to_xyxy
from snapper.integrations.labelstudio import percent_to_xywh
from snapper.integrations.labelstudio_api import LabelStudioClient
from snapper.review.tasks import (
    ACCOUNT_PARQUET,
    BOX_TAG,
    BOXES_FIELD,
    GOLD_JSON,
    KEY_FIELD,
    PULL_JSON,
    PUSH_JSON,
    REVIEWED_JSON,
    ROUGH_JSON,
    BatchOutput,
    annotation_of_region,
    finite_box,
    label_names,
    task_key,
)

MOVED_PX = 0.5  # a box whose edges all stay within this of the pushed one was confirmed
REMATCH_IOU = 0.5
GOLD_STATUSES = ("confirmed", "corrected", "added")
STATUSES = ("not_flagged", *GOLD_STATUSES, "removed", "skipped", "pending", "invalid_edit", "not_pushable")


@dataclass
class Outcome:
    """One box's review outcome (a row of ``review.parquet``)."""

    annotation_id: int
    status: str
    task_id: int | None = None
    bbox: list[float] | None = None  # the reviewed box (None: unchanged)
    category_id: Any = None
    detail: str | None = None


@dataclass
class PullResult:
    outcomes: dict[int, Outcome]
    added: list[tuple[dict[str, Any], Outcome]] = field(default_factory=list)  # (new annotation, outcome)
    problems: list[str] = field(default_factory=list)  # one line each, for the user

    def counts(self) -> dict[str, int]:
        c = {s: 0 for s in STATUSES}
        for o in [*self.outcomes.values(), *(o for _, o in self.added)]:
            c[o.status] += 1
        return c


def _latest_submitted(task: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The task's latest submitted annotation, and whether it has a skipped one."""
    anns = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    done = [a for a in anns if not a.get("was_cancelled")]
    latest = max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0),
                 default=None)
    return latest, any(a.get("was_cancelled") for a in anns)


def _regions(annotation: dict[str, Any], im: dict[str, Any], task_id: Any
             ) -> tuple[list[tuple[str, list[float], str | None]], list[tuple[str, str]]]:
    """(region id, box px, label) of the annotation's rectangles on the ``box`` control; and
    (region id, why) of those that are no box."""
    ok, bad = [], []
    for r in annotation.get("result") or []:
        if not isinstance(r, dict) or r.get("type") not in ("rectanglelabels", "rectangle") or r.get("from_name") != BOX_TAG:
            continue
        rid = str(r.get("id"))
        try:
            box = percent_to_xywh(r.get("value") or {}, float(im["width"]), float(im["height"]))
        except UserInputError as e:
            bad.append((rid, f"task {task_id} region {rid}: {str(e).split(';')[0]}; the box is not taken"))
            continue
        labels = (r.get("value") or {}).get("rectanglelabels") or []
        ok.append((rid, box, labels[0] if labels else None))
    return ok, bad


def _moved(a: list[float], b: list[float]) -> float:
    return float(np.abs(xywh_to_xyxy(np.array([a], float)) - xywh_to_xyxy(np.array([b], float))).max())


def _read_task(task: dict[str, Any], batch: BatchOutput, ids: list[int], by_label: dict[str, Any],
               res: PullResult, next_id: list[int]) -> None:
    """The outcomes of one task's boxes (and its added boxes) into ``res``."""
    tid = task.get("id")
    latest, skipped = _latest_submitted(task)
    if latest is None:
        status = "skipped" if skipped else "pending"
        for i in ids:
            res.outcomes[i] = Outcome(i, status, tid)
        return
    anns = batch.annotations
    im = batch.images[anns[ids[0]]["image_id"]]
    regions, bad = _regions(latest, im, tid)
    seen: dict[int, tuple[list[float], str | None]] = {}
    others = []
    for rid, box, label in regions:
        aid = annotation_of_region(rid)
        if aid in ids and aid not in seen:
            seen[aid] = (box, label)
        else:
            others.append((rid, box, label))
    for rid, why in bad:
        aid = annotation_of_region(rid)
        if aid in ids:
            seen.pop(aid, None)
            res.outcomes[aid] = Outcome(aid, "invalid_edit", tid, detail=why)
        res.problems.append(why + ("" if aid in ids else " (a drawn region: not added)"))
    gone = [i for i in ids if i not in seen and i not in res.outcomes]
    for rid, box, label in others:  # a deleted box drawn again, or a new one
        if gone:
            ious = paired_iou(xywh_to_xyxy(np.array([finite_box(anns[i]["bbox"]) for i in gone], float)),
                              xywh_to_xyxy(np.array([box] * len(gone), float)))
            k = int(np.argmax(ious))
            if ious[k] >= REMATCH_IOU:
                seen[gone.pop(k)] = (box, label)
                continue
        new = {"id": next_id[0], "image_id": im["id"], "category_id": by_label.get(label), "bbox": _round(box),
               "area": round(box[2] * box[3], 3), "iscrowd": 0}
        res.added.append((new, Outcome(next_id[0], "added", tid, new["bbox"], new["category_id"], f"region {rid}")))
        next_id[0] += 1
    for i in ids:
        if i in res.outcomes:
            continue
        if i not in seen:
            res.outcomes[i] = Outcome(i, "removed", tid, detail="its region was deleted by the reviewer")
            continue
        box, label = seen[i]
        cat = by_label.get(label, anns[i].get("category_id"))
        changed = _moved(box, finite_box(anns[i]["bbox"])) > MOVED_PX or cat != anns[i].get("category_id")  # type: ignore[arg-type]
        res.outcomes[i] = Outcome(i, "corrected" if changed else "confirmed", tid, _round(box), cat)


def _round(box: list[float]) -> list[float]:
    return [round(float(v), 2) for v in box]


def read_export(batch: BatchOutput, tasks: list[dict[str, Any]], pushed: dict[int, str] | None = None) -> PullResult:
    """Every annotation's outcome from a project export (module doc); ``pushed`` maps the
    annotations ``push`` could not show to why (``push.json``)."""
    anns = batch.annotations
    by_label = {v: k for k, v in label_names(batch.data.get("categories") or []).items()}
    res = PullResult({})
    next_id = [max(anns, default=0) + 1]
    foreign = 0
    for task in sorted(tasks, key=lambda t: t.get("id") or 0):
        data = task.get("data") or {}
        ids = data.get(BOXES_FIELD)
        if KEY_FIELD not in data or not isinstance(ids, list):
            continue
        known = all(isinstance(i, int) and i in anns for i in ids) and anns[ids[0]].get("image_id") in batch.images
        if not ids or not known or data[KEY_FIELD] != task_key(batch.images[anns[ids[0]]["image_id"]],
                                                                 [anns[i] for i in ids]):
            foreign += len(ids)  # another batch's task, or this folder re-snapped since the push
            continue
        mine = [i for i in ids if i in batch.flagged and i not in res.outcomes]
        if mine:
            _read_task(task, batch, mine, by_label, res, next_id)
    if foreign:
        res.problems.append(f"{foreign} boxes of the project's tasks were not pushed from this folder as it is now "
                            "(another batch in the same project, or re-snapped since the push): left out")
    for aid in anns:
        if aid in res.outcomes:
            continue
        if aid not in batch.flagged:
            res.outcomes[aid] = Outcome(aid, "not_flagged")
        elif pushed and aid in pushed:
            res.outcomes[aid] = Outcome(aid, "not_pushable", detail=pushed[aid])
        else:
            res.outcomes[aid] = Outcome(aid, "pending", detail="no task in the project holds it (task deleted, or not "
                                        "pushed yet)")
    return res


def read_pushed(batch: BatchOutput) -> dict[int, str]:
    path = batch.review_dir / PUSH_JSON
    if not path.is_file():
        return {}
    return {int(k): str(v) for k, v in json.loads(path.read_text()).get("not_pushable", {}).items()}


def write_outputs(batch: BatchOutput, res: PullResult, meta: dict[str, Any]) -> dict[str, Any]:
    """The five files of the module doc; returns ``pull.json``'s content."""
    out = batch.review_dir
    out.mkdir(exist_ok=True)
    data, anns = batch.data, batch.annotations
    reviewed, gold, rough = [], [], []
    for a in data["annotations"]:
        o = res.outcomes[a["id"]]
        if o.status == "removed":
            continue
        new = dict(a)
        if o.bbox is not None:
            new["bbox"], new["category_id"] = o.bbox, o.category_id
            new["area"] = round(o.bbox[2] * o.bbox[3], 3) if not a.get("segmentation") else a.get("area")
        new["snapper_review"] = {"status": o.status, "task": o.task_id, "detail": o.detail}
        reviewed.append(new)
        if o.status in GOLD_STATUSES:
            gold.append({k: v for k, v in new.items() if k not in ("snapper", "snapper_review")})
            if (rb := finite_box(a["snapper"].get("rough_bbox"))) is not None:
                rough.append({**gold[-1], "bbox": rb, "area": round(rb[2] * rb[3], 3)})
    for new, o in res.added:
        reviewed.append({**new, "snapper_review": {"status": "added", "task": o.task_id, "detail": o.detail}})
        gold.append(new)
    keep = {a["image_id"] for a in gold}
    images = [im for im in data.get("images", []) if im.get("id") in keep]
    coco = {k: v for k, v in data.items() if k not in ("annotations", "snapper_fused")}  # gold: plain COCO
    atomic_write_json(out / REVIEWED_JSON, {**data, "annotations": reviewed})
    atomic_write_json(out / GOLD_JSON, {**coco, "images": images, "annotations": gold})
    atomic_write_json(out / ROUGH_JSON, {**coco, "images": images, "annotations": rough})
    atomic_write_parquet(_table(res, anns), out / ACCOUNT_PARQUET)
    summary = {**meta, "annotations": len(anns), "counts": res.counts(), "gold": len(gold), "rough_pairs": len(rough),
               "gold_images": len(images), "problems": res.problems,
               "files": [REVIEWED_JSON, GOLD_JSON, ROUGH_JSON, ACCOUNT_PARQUET]}
    atomic_write_json(out / PULL_JSON, summary, indent=1)
    return summary


def _table(res: PullResult, anns: dict[int, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    added = {new["id"]: new for new, _ in res.added}
    for o in [*res.outcomes.values(), *(o for _, o in res.added)]:
        a = anns.get(o.annotation_id) or {"image_id": added[o.annotation_id]["image_id"]}
        snapped = finite_box(a.get("bbox"))
        rows.append({"annotation_id": o.annotation_id, "image_id": a.get("image_id"), "status": o.status,
                     "task_id": o.task_id, "detail": o.detail, "snapped_bbox": snapped, "reviewed_bbox": o.bbox,
                     "rough_bbox": finite_box(a.get("snapper", {}).get("rough_bbox")),
                     "moved_px": _moved(o.bbox, snapped) if o.bbox and snapped else None})
    df = pd.DataFrame(rows).sort_values("annotation_id", kind="stable").reset_index(drop=True)
    df["task_id"] = df["task_id"].astype("Int64")
    df["image_id"] = df["image_id"].astype("Int64")
    return df


def previous_statuses(batch: BatchOutput) -> dict[int, tuple[str, Any]]:
    """Annotation id -> (status, task) of the last pull, to notice what vanished since."""
    path = batch.review_dir / ACCOUNT_PARQUET
    if not path.is_file():
        return {}
    df = pd.read_parquet(path, columns=["annotation_id", "status", "task_id"])
    return {int(i): (s, t) for i, s, t in zip(df["annotation_id"], df["status"], df["task_id"])}


def vanished(before: dict[int, tuple[str, Any]], res: PullResult) -> list[str]:
    """One line per task whose reviewed boxes went back to pending/skipped since the last pull
    (its annotation deleted, or the task removed, in Label Studio): nothing is lost, the line says so."""
    by_task: dict[Any, list[int]] = {}
    for aid, (status, task) in before.items():
        now = res.outcomes.get(aid)
        if status in (*GOLD_STATUSES, "removed") and now is not None and now.status in ("pending", "skipped"):
            by_task.setdefault(task, []).append(aid)
    return [f"task {t}: the annotation the last pull read is gone from Label Studio (deleted?); boxes "
            f"{', '.join(f'#{i}' for i in ids)} are {res.outcomes[ids[0]].status} again, their snapped boxes kept"
            for t, ids in sorted(by_task.items(), key=lambda kv: str(kv[0]))]


def pull(batch: BatchOutput, client: LabelStudioClient, title: str) -> dict[str, Any]:
    """Export project ``title`` and write the review files of ``batch`` (module doc); returns
    ``pull.json``'s content, whose ``problems`` are one line each."""
    project = client.project_named(title)
    before = previous_statuses(batch)
    res = read_export(batch, client.export(project["id"]), read_pushed(batch))
    res.problems += vanished(before, res)
    return write_outputs(batch, res, {"label_studio": client.url, "project": title, "project_id": project["id"]})
