"""``snapper review push``: the boxes a batch run put on its review list, as Label Studio tasks.

One task per image with boxes to review; its prediction holds only those boxes (snapped, or
the rough box where snapping kept it), each scored by its weakest edge with the four edge
confidences in ``meta``; the task's note names the doubtful edges and the rough box. Idempotent:
tasks are keyed by image and the boxes they show (``snapper_key``,
:func:`snapper.review.tasks.task_key`), and a task already in the project is not imported again. What could not be shown (no image entry, an image file missing, a box that is not one) is
listed in ``review/push.json`` with the reason, so ``pull`` still accounts for it.

Images reach Label Studio as URLs: ``image_url`` + the image's ``file_name`` (a web server or
bucket serving the images folder), uploaded into the project (``upload``: for a Label Studio on
another machine that cannot read this one's disk; each image once, an image a task of the
project already shows is not sent again), or by default Label Studio's local-files storage
(``/data/local-files/?d=<path>``, the path relative to ``$LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``,
which must hold the images folder; ``make labelstudio`` starts Label Studio that way).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from snapper.atomic import atomic_write_json
from snapper.batch.schema import SNAPPED
from snapper.errors import BadOptionError, InputNotFoundError
from snapper.integrations.labelstudio import xywh_to_percent
from snapper.integrations.labelstudio_api import LabelStudioClient, LabelStudioError
from snapper.review.tasks import (
    BOX_TAG,
    BOXES_FIELD,
    IMAGE_TAG,
    KEY_FIELD,
    MODEL_VERSION,
    NOTE_FIELD,
    PUSH_JSON,
    BatchOutput,
    config_labels,
    doubtful_edges,
    finite_box,
    label_config,
    label_names,
    region_id,
    task_key,
)

LOCAL_FILES_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
LOCAL_FILES_PREFIX = "/data/local-files/?d="


@dataclass
class PushResult:
    project_id: int
    project_created: bool
    imported: dict[str, list[int]] = field(default_factory=dict)  # task key -> annotation ids
    already: dict[str, list[int]] = field(default_factory=dict)  # in the project before this push
    not_pushable: dict[int, str] = field(default_factory=dict)  # annotation id -> why

    @property
    def boxes(self) -> int:
        return sum(map(len, self.imported.values())) + sum(map(len, self.already.values()))


def image_url_for(file_name: str, images: Path, image_url: str | None) -> str:
    """The URL Label Studio loads an image from (module doc)."""
    if image_url:
        return image_url + quote(file_name)
    root = os.environ.get(LOCAL_FILES_ROOT_ENV)
    if not root:
        raise BadOptionError(f"give --image-url (where Label Studio can load the images from), or set "
                             f"{LOCAL_FILES_ROOT_ENV} to the folder Label Studio serves local files from")
    path = (images / file_name).resolve()
    try:
        rel = path.relative_to(Path(root).resolve())
    except ValueError:
        raise BadOptionError(f"{images} is not inside {LOCAL_FILES_ROOT_ENV}={root}: Label Studio can only serve "
                             "local files below it (or give --image-url)") from None
    return LOCAL_FILES_PREFIX + quote(rel.as_posix())


def _note(batch: BatchOutput, anns: list[dict[str, Any]], labels: dict[int, str]) -> str:
    """The text above the image: per box, what to check."""
    parts = []
    for a in anns:
        s = a["snapper"]
        edges = doubtful_edges(batch, a)
        what = ", ".join(f"{e} ({'?' if c is None else f'{c:.2f}'})" for e, c in edges.items())
        why = [r for r in batch.flagged.get(a["id"], []) if ":" not in r]
        rough = s.get("rough_bbox")
        rough_txt = f"rough {[round(float(v)) for v in rough]}" if finite_box(rough) else "rough box unusable"
        head = f"#{a['id']} {labels.get(a.get('category_id'), '?')}"
        body = (f"check {what}" if what else "check the box") + (f"; {', '.join(why)}" if why else "")
        if s.get("status") != SNAPPED:
            body += f"; not snapped ({s.get('reason')}): the box shown is the rough one"
        parts.append(f"{head}: {body}; {rough_txt}")
    return " | ".join(parts)


def _region(a: dict[str, Any], box: list[float], im: dict[str, Any], labels: dict[int, str]) -> dict[str, Any]:
    conf = a["snapper"].get("confidence") or {}
    finite = [float(v) for v in conf.values() if isinstance(v, (int, float))]
    value = {**xywh_to_percent(box, im["width"], im["height"]), "rectanglelabels": [labels.get(a.get("category_id"), "?")]}
    r: dict[str, Any] = {"id": region_id(a["id"]), "from_name": BOX_TAG, "to_name": IMAGE_TAG, "type": "rectanglelabels",
                         "original_width": int(im["width"]), "original_height": int(im["height"]), "image_rotation": 0,
                         "value": value, "meta": {"text": [f"snapper #{a['id']}"], "confidence": conf,
                                                  "rough_bbox": a["snapper"].get("rough_bbox")}}
    if finite:
        r["score"] = round(min(finite), 4)
    return r


def plan_tasks(batch: BatchOutput, images: Path, image_url: str | None, upload: bool = False
               ) -> tuple[dict[str, dict[str, Any]], dict[int, str]]:
    """Task key -> Label Studio task for every image with boxes to review, and the boxes that
    cannot be shown with why. With ``upload`` the tasks' ``image`` is left empty (:func:`push`
    fills it once the file is in Label Studio)."""
    labels, anns, imgs = label_names(batch.data.get("categories") or []), batch.annotations, batch.images
    by_image: dict[int, list[dict[str, Any]]] = {}
    skipped: dict[int, str] = {}
    for aid in batch.flagged:
        a = anns[aid]
        im = imgs.get(a.get("image_id"))
        reason = a["snapper"].get("reason")
        if im is None or not isinstance(im.get("file_name"), str):
            skipped[aid] = "no usable image entry"
        elif reason and (reason.startswith("image_") or reason in ("unknown_image", "outside_images_dir")):
            skipped[aid] = f"image not loadable ({reason})"
        elif finite_box(a.get("bbox")) is None or not all(isinstance(im.get(k), (int, float)) and im[k] > 0
                                                        for k in ("width", "height")):
            skipped[aid] = f"no box to show ({reason or 'malformed bbox'})"
        elif not (images / im["file_name"]).is_file():
            skipped[aid] = f"image file {im['file_name']} not in {images}"
        else:
            by_image.setdefault(im["id"], []).append(a)
    tasks = {}
    for iid in sorted(by_image):
        im, group = imgs[iid], sorted(by_image[iid], key=lambda a: a["id"])
        regions = [_region(a, finite_box(a["bbox"]), im, labels) for a in group]  # type: ignore[arg-type]
        scores = [r["score"] for r in regions if "score" in r]
        key = task_key(im, group)
        image = "" if upload else image_url_for(im["file_name"], images, image_url)
        tasks[key] = {"data": {"image": image, KEY_FIELD: key,
                               BOXES_FIELD: [a["id"] for a in group], NOTE_FIELD: _note(batch, group, labels),
                               "snapper_file": im["file_name"], "snapper_image_id": iid},
                      "predictions": [{"model_version": MODEL_VERSION, "score": min(scores) if scores else 0.0,
                                       "result": regions}]}
    return tasks, skipped


def ensure_project(client: LabelStudioClient, title: str, labels: list[str]) -> tuple[dict[str, Any], bool]:
    """The project named ``title``, made with this command's labelling config when missing; an
    existing one must have been made by it (its new labels are added)."""
    project = client.find_project(title)
    if project is None:
        return (client.create_project(title, label_config(labels), "snapper review: doubtful boxes and edges",
                                      prelabel_with=MODEL_VERSION), True)
    have = config_labels(project.get("label_config") or "")
    if have is None:
        raise LabelStudioError(f"project {title!r} at {client.url} exists but its labelling config has no "
                               f"RectangleLabels {BOX_TAG!r} on an Image {IMAGE_TAG!r}: it was not made by "
                               "`snapper review push`; pick another --project")
    if missing := [x for x in labels if x not in have]:
        client.update_label_config(project["id"], label_config(have + missing))
    return project, False


def _upload_images(client: LabelStudioClient, project_id: int, images: Path, new: list[dict[str, Any]],
                   existing: Iterable[dict[str, Any]]) -> None:
    """Fills the ``image`` of each new task: the URL of the same file in a task the project
    already has (a box set re-pushed after a new snap), else a fresh upload."""
    have = {t["data"]["snapper_file"]: t["data"]["image"] for t in existing
            if isinstance(t.get("data"), dict) and t["data"].get("snapper_file") and t["data"].get("image")}
    for task in new:
        name = task["data"]["snapper_file"]
        if name not in have:
            have[name] = client.upload_file(project_id, images / name)
        task["data"]["image"] = have[name]


def push(batch: BatchOutput, images: str | os.PathLike[str], client: LabelStudioClient, title: str,
         image_url: str | None = None, upload: bool = False) -> PushResult:
    """Import the review tasks of ``batch`` into project ``title`` (module doc); writes
    ``review/push.json`` atomically and returns what was imported."""
    images = Path(images)
    if not images.is_dir():
        raise InputNotFoundError(f"images folder {images} does not exist")
    if upload and image_url:
        raise BadOptionError("give --upload or --image-url, not both")
    tasks, skipped = plan_tasks(batch, images, image_url, upload)
    labels = sorted(set(label_names(batch.data.get("categories") or []).values()))
    project, created = ensure_project(client, title, labels)
    if not image_url and not upload:
        client.ensure_local_storage(project["id"], str(images.resolve()))
    existing = {} if created else {t.get("data", {}).get(KEY_FIELD): t for t in client.export(project["id"])}
    res = PushResult(project["id"], created, not_pushable=skipped)
    new = []
    for key, task in tasks.items():
        (res.already if key in existing else res.imported)[key] = task["data"][BOXES_FIELD]
        if key not in existing:
            new.append(task)
    if upload:
        _upload_images(client, project["id"], images, new, existing.values())
    client.import_tasks(project["id"], new)
    batch.review_dir.mkdir(exist_ok=True)
    atomic_write_json(batch.review_dir / PUSH_JSON, {
        "label_studio": client.url, "project": title, "project_id": project["id"],
        "tasks": {k: v for k, v in sorted({**res.already, **res.imported}.items())},
        "not_pushable": {str(k): v for k, v in sorted(skipped.items())}}, indent=1)
    return res

