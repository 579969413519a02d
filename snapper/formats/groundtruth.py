"""SageMaker Ground Truth bounding-box manifests (JSON lines).

Each line has ``source-ref`` (the image's path or URI; its basename is looked up in
``images_dir``) and a label attribute named after the labeling job. Two payloads are read:

* the job's output (consolidated)::

      {"source-ref": "s3://b/p/img1.jpg",
       "<attr>": {"annotations": [{"class_id": 0, "left": 10, "top": 12, "width": 40, "height": 30}, ...],
                  "image_size": [{"width": 80, "height": 60, "depth": 3}]},
       "<attr>-metadata": {"class-map": {"0": "car"}, "type": "groundtruth/object-detection", ...}}

  Annotations may carry ``worker_id`` (or ``workerId``) when a user passes several workers'
  boxes per object this way;
* the workers' raw responses, as in Ground Truth's ``worker-response`` files::

      {"source-ref": "...", "<attr>": {"answers": [{"workerId": "w1", "answerContent": {"boundingBox": {
          "boundingBoxes": [{"label": "car", "left": 10, "top": 12, "width": 40, "height": 30}],
          "inputImageProperties": {"width": 80, "height": 60}}}}, ...]}}

``left, top, width, height`` are pixels in the continuous frame, used as COCO ``[x, y, w, h]``
as they are. The label attribute is ``label_attribute`` or, when not given, the one key of the
first line that holds an object with ``annotations`` and ``image_size`` (or ``answers``).

Several workers per object: a line with worker responses, or whose annotations name more than
one worker (or every line with ``consolidate=True``), is consolidated: the boxes of the image
are grouped into objects by :func:`snapper.formats.consolidate.group_boxes` (greedy IoU >= 0.5,
same class, one box per worker) and each box gets the group's ``object_id`` (the batch path's
``BatchConfig.fuse_key``), so the batch output has one fused box per object, and
``agreement_iou`` (mean pairwise IoU of the group's rough boxes).

Writing back: the manifest is written line for line. A plain line gets its snapped boxes in
``<attr>.annotations`` and ``<attr>-snapper.annotations`` (per box: status, reason, rough
box, per-edge change, confidence, review flag). A consolidated line gets one box per object
in ``<attr>.annotations`` (the fused box; the mean of the members' boxes when none snapped)
and ``<attr>-snapper`` with ``objects`` (agreement, fused confidence and spread, review
flag), ``workers`` (every worker box with its outcome) and ``input`` (the line's original
payload, so nothing is lost). A line that is not JSON, has no ``source-ref`` or no label
attribute, or a payload of the wrong shape is refused naming the file and line.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from snapper.atomic import atomic_write_text
from snapper.formats.common import (
    CocoBuilder,
    FormatError,
    Sidecar,
    by_id,
    category_names,
    dumps_line,
    group_by_image,
    is_box,
    number,
    outcome,
    raw_box,
)
from snapper.formats.consolidate import agreement, group_boxes

NAME = "groundtruth"
DEFAULT_ATTRIBUTE = "bounding-box"
SNAPPER_SUFFIX = "-snapper"


def read_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line; a bad line raises naming it."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: cannot read ({e})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}: line {n}: not valid JSON ({e.msg}, column {e.colno})") from None
        except RecursionError:
            raise FormatError(f"{path}: line {n}: not usable JSON (nested too deeply)") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("source-ref"), str) or not obj["source-ref"]:
            raise FormatError(f"{path}: line {n}: a manifest line is an object with a 'source-ref' string")
        out.append((n, obj))
    if not out:
        raise FormatError(f"{path}: the manifest has no lines")
    return out


def is_payload(v: Any) -> bool:
    return isinstance(v, dict) and (("annotations" in v and "image_size" in v) or "answers" in v)


def find_attribute(path: Path, n: int, obj: dict[str, Any]) -> str:
    keys = [k for k, v in obj.items() if is_payload(v)]
    if len(keys) != 1:
        raise FormatError(f"{path}: line {n}: cannot tell the label attribute ({len(keys)} keys hold boxes: "
                          f"{keys}); name it with --label-attribute")
    return keys[0]


def _box(item: dict[str, Any]) -> Any:
    values = [item.get(k) for k in ("left", "top", "width", "height")]
    nums = [number(v) for v in values]
    return nums if all(v is not None for v in nums) else raw_box(values)


def _consolidated(where: str, payload: dict[str, Any], cmap: dict[str, str]) -> tuple[Any, list[dict[str, Any]]]:
    """(image size entry, boxes) of a job-output payload."""
    anns, size = payload.get("annotations"), payload.get("image_size")
    if not isinstance(anns, list):
        raise FormatError(f"{where}: 'annotations' must be a list")
    boxes = []
    for i, item in enumerate(anns):
        if not isinstance(item, dict) or "class_id" not in item:
            raise FormatError(f"{where}: annotations[{i}] must be an object with a 'class_id'")
        cid = item["class_id"]
        boxes.append({"box": _box(item), "label": cmap.get(str(cid), str(cid)), "class_id": cid,
                      "worker": item.get("worker_id", item.get("workerId")), "kind": "annotations", "index": i})
    return (size[0] if isinstance(size, list) and size and isinstance(size[0], dict) else {}), boxes


def _answers(where: str, payload: dict[str, Any], label_ids: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    """(image size entry, boxes) of a worker-response payload."""
    answers, size, boxes = payload.get("answers"), {}, []
    if not isinstance(answers, list):
        raise FormatError(f"{where}: 'answers' must be a list")
    for i, ans in enumerate(answers):
        bb = ans.get("answerContent", {}).get("boundingBox") if isinstance(ans, dict) else None
        if not isinstance(bb, dict) or not isinstance(bb.get("boundingBoxes"), list):
            raise FormatError(f"{where}: answers[{i}] has no answerContent.boundingBox.boundingBoxes list")
        size = size or bb.get("inputImageProperties") or {}
        for j, item in enumerate(bb["boundingBoxes"]):
            if not isinstance(item, dict) or not isinstance(item.get("label"), str):
                raise FormatError(f"{where}: answers[{i}].boundingBoxes[{j}] must be an object with a 'label'")
            cid = label_ids.setdefault(item["label"], max(label_ids.values(), default=-1) + 1)
            boxes.append({"box": _box(item), "label": item["label"], "class_id": cid,
                          "worker": ans.get("workerId", f"answer-{i}"), "kind": "answers", "index": i, "box_j": j})
    return size, boxes


def _line_boxes(path: Path, n: int, obj: dict[str, Any], attr: str,
                label_ids: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    where = f"{path}: line {n}: '{attr}'"
    payload = obj.get(attr)
    if not is_payload(payload):
        raise FormatError(f"{where} is missing or holds no 'annotations'+'image_size' or 'answers'")
    meta = obj.get(f"{attr}-metadata")
    cmap = meta.get("class-map") if isinstance(meta, dict) and isinstance(meta.get("class-map"), dict) else {}
    for k, v in cmap.items():
        label_ids.setdefault(str(v), int(k) if str(k).lstrip("-").isdigit() else k)
    if "answers" in payload:
        return _answers(where, payload, label_ids)
    return _consolidated(where, payload, {str(k): str(v) for k, v in cmap.items()})


def _add_line(b: CocoBuilder, objects: dict[str, Any], n: int, obj: dict[str, Any], size: Any,
              boxes: list[dict[str, Any]], consolidate: bool, fuse_key: str) -> None:
    size = size if isinstance(size, dict) else {}
    image_id = b.image(PurePosixPath(obj["source-ref"]).name, size.get("width"), size.get("height"))
    groups = group_boxes([x["box"] for x in boxes], [x["label"] for x in boxes],
                         [x["worker"] for x in boxes]) if consolidate else [None] * len(boxes)
    for g in sorted({g for g in groups if g is not None}):
        members = [x for x, gg in zip(boxes, groups) if gg == g]
        objects[f"L{n}-{g + 1}"] = {"line": n, "label": members[0]["label"], "class_id": members[0]["class_id"],
                                    "agreement_iou": agreement([m["box"] for m in members]), "members": []}
    for x, g in zip(boxes, groups):
        oid = None if g is None else f"L{n}-{g + 1}"
        extra: dict[str, Any] = {} if x["worker"] is None else {"worker_id": x["worker"]}
        if oid is not None:
            extra.update({fuse_key: oid, "agreement_iou": objects[oid]["agreement_iou"]})
        record = {"line": n, "kind": x["kind"], "index": x["index"], "box": x.get("box_j"), "worker": x["worker"],
                  "object": oid, "class_id": x["class_id"], "label": x["label"]}
        ann_id = b.annotation(image_id, x["box"], x["label"], record, **extra)
        if oid is not None:
            objects[oid]["members"].append(ann_id)


def read(path: str | Path, images_dir: str | Path | None = None, label_attribute: str | None = None,
         consolidate: bool | None = None, fuse_key: str = "object_id", **_: Any) -> tuple[dict[str, Any], Sidecar]:
    """A Ground Truth manifest -> (rough COCO dict, sidecar). ``consolidate``: None groups the
    lines that have worker responses or several workers, True every line, False none."""
    path = Path(path)
    lines = read_lines(path)
    attr = label_attribute or find_attribute(path, *lines[0])
    b, objects, label_ids, grouped = CocoBuilder(), {}, {}, []
    for n, obj in lines:
        size, boxes = _line_boxes(path, n, obj, attr, label_ids)
        workers = {x["worker"] for x in boxes} - {None}
        do = consolidate if consolidate is not None else (bool(boxes) and boxes[0]["kind"] == "answers"
                                                           or len(workers) > 1)
        if do:
            grouped.append(n)
        _add_line(b, objects, n, obj, size, boxes, do, fuse_key)
    extra = {"label_attribute": attr, "objects": objects, "consolidated_lines": grouped, "label_ids": label_ids}
    return b.coco(f"Ground Truth manifest {path}"), Sidecar(NAME, str(path), b.records, extra)


# ------------------------------------------------------------------------------- writing


def _gt_box(box: list[float]) -> dict[str, float]:
    return dict(zip(("left", "top", "width", "height"), (round(float(v), 3) for v in box)))


def _plain_line(obj: dict[str, Any], attr: str, members: list[tuple[int, dict[str, Any]]],
                anns: dict[int, dict[str, Any]]) -> None:
    details = []
    for ann_id, r in members:
        o = outcome(anns[ann_id])
        if o.snapped and is_box(o.bbox):
            obj[attr]["annotations"][r["index"]].update(_gt_box(o.bbox))
        details.append({"index": r["index"], **o.extras()})
    obj[attr + SNAPPER_SUFFIX] = {"annotations": details}


def _object_entry(oid: str, info: dict[str, Any], fused: dict[str, Any] | None,
                  outs: list[Any]) -> dict[str, Any]:
    """One object of a consolidated line: the fused box, or the members' mean box."""
    if fused and fused.get("bbox") is not None:
        box, is_fused = fused["bbox"], True
    else:
        usable = [o.bbox for o in outs if is_box(o.bbox)]
        box, is_fused = ([round(float(v), 3) for v in np.mean(usable, axis=0)] if usable else None), False
    f = fused or {}
    return {"object_id": oid, "label": info["label"], "class_id": info["class_id"], "n_workers": len(outs),
            "n_snapped": sum(o.snapped for o in outs), "agreement_iou": info["agreement_iou"], "bbox": box,
            "fused": is_fused, "confidence": f.get("confidence"), "spread_px": f.get("spread_px"),
            "needs_review": bool(f.get("needs_review", True))}


def _consolidated_line(obj: dict[str, Any], attr: str, members: list[tuple[int, dict[str, Any]]],
                       anns: dict[int, dict[str, Any]], fused: dict[str, Any], side: Sidecar) -> None:
    payload = obj[attr]
    by_object: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for ann_id, r in members:
        by_object[r["object"]].append((ann_id, r))
    objects, boxes, workers = [], [], []
    for oid, mem in by_object.items():
        outs = [outcome(anns[i]) for i, _ in mem]
        entry = _object_entry(oid, side.extra["objects"][oid], fused.get(oid), outs)
        objects.append(entry)
        if entry["bbox"] is not None:
            boxes.append({"class_id": entry["class_id"], **_gt_box(entry["bbox"])})
        for (_, r), o in zip(mem, outs):
            workers.append({"worker_id": r["worker"], "object_id": oid, "source": [r["kind"], r["index"], r["box"]],
                            "bbox": o.bbox, **o.extras()})
    size = payload.get("image_size")
    if "answers" in payload:
        props = next((a.get("answerContent", {}).get("boundingBox", {}).get("inputImageProperties")
                      for a in payload["answers"]), None) or {}
        size = [{"width": props.get("width"), "height": props.get("height"), "depth": 3}]
    obj[attr] = {"annotations": boxes, "image_size": size}
    meta = obj.setdefault(attr + "-metadata", {})
    if isinstance(meta, dict):
        cmap = meta.setdefault("class-map", {})
        for e in objects:
            cmap.setdefault(str(e["class_id"]), e["label"])
        meta.setdefault("type", "groundtruth/object-detection")
    obj[attr + SNAPPER_SUFFIX] = {"objects": objects, "workers": workers, "input": payload}


def _write_back(coco: dict[str, Any], side: Sidecar, out_dir: Path) -> list[Path]:
    src, attr = Path(side.source), side.extra["label_attribute"]
    anns = by_id(coco)
    fused = {str(f["object_id"]): f for f in coco.get("snapper_fused", [])}
    per_line: dict[int, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for ann_id, r in side.records.items():
        if ann_id not in anns:
            raise FormatError(f"{src}: line {r['line']}: a box is not in the result (the file changed?)")
        per_line[r["line"]].append((ann_id, r))
    grouped = set(side.extra["consolidated_lines"])
    out = []
    for n, obj in read_lines(src):
        members = sorted(per_line.get(n, []), key=lambda m: m[0])
        if n in grouped:
            _consolidated_line(obj, attr, members, anns, fused, side)
        else:
            _plain_line(obj, attr, members, anns)
        out.append(dumps_line(obj))
    return [atomic_write_text(out_dir / src.name, "".join(f"{x}\n" for x in out))]


def _fresh(coco: dict[str, Any], out_dir: Path, attr: str) -> list[Path]:
    names = category_names(coco)
    per_image = group_by_image(coco)
    cmap = {str(cid): n for cid, n in names.items()}
    out = []
    for im in coco.get("images", []):
        boxes, details = [], []
        for a in per_image[im["id"]]:
            o = outcome(a)
            if is_box(o.bbox):
                boxes.append({"class_id": a.get("category_id"), **_gt_box(o.bbox)})
            details.append({"annotation_id": a.get("id"), **o.extras()})
        line: dict[str, Any] = {"source-ref": im["file_name"], attr: {"annotations": boxes, "image_size": [
            {"width": im.get("width"), "height": im.get("height"), "depth": 3}]},
            attr + "-metadata": {"class-map": cmap, "type": "groundtruth/object-detection"}}
        if any(d.get("status") for d in details):
            line[attr + SNAPPER_SUFFIX] = {"annotations": details}
        out.append(dumps_line(line))
    return [atomic_write_text(out_dir / "output.manifest", "".join(f"{x}\n" for x in out))]


def write(coco: dict[str, Any], sidecar: Sidecar | None, out_dir: str | Path) -> list[Path]:
    """The (snapped) COCO dict as a manifest under ``out_dir``: the source manifest line for
    line when ``sidecar`` is a Ground Truth one, else ``output.manifest`` with one line per image
    (label attribute ``bounding-box``, class ids = COCO category ids)."""
    out_dir = Path(out_dir)
    if sidecar is not None and sidecar.format == NAME:
        return _write_back(coco, sidecar, out_dir)
    return _fresh(coco, out_dir, DEFAULT_ATTRIBUTE)
