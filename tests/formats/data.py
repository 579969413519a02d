"""Test inputs for the format readers/writers, made in the test: small images with a bright
rectangle and hand-written VOC, YOLO, CVAT and Ground Truth files over the same boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# file name -> (width, height, [(label, [x, y, w, h]), ...]) in continuous COCO pixels
IMAGES = {
    "a.jpg": (80, 60, [("car", [14.5, 11.25, 41.0, 30.75]), ("person", [0.0, 0.0, 10.0, 20.0])]),
    "b.png": (100, 70, [("car", [60.125, 30.0, 39.875, 40.0])]),
    "c.jpg": (64, 48, []),
}


def photo(path: Path, size: tuple[int, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 40).astype(np.uint8)
    arr[12:40, 15:55] = (200, 120, 40)
    Image.fromarray(arr).save(path)


def make_images(root: Path) -> Path:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i, (name, (w, h, _)) in enumerate(IMAGES.items()):
        photo(images / name, (w, h), seed=i)
    return images


def base_coco() -> dict:
    """The boxes of :data:`IMAGES` as a COCO dict."""
    cats = {"car": 1, "person": 2}
    images, anns = [], []
    for i, (name, (w, h, boxes)) in enumerate(IMAGES.items(), 1):
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        for label, box in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cats[label], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": n} for n, i in cats.items()]}


def boxes_by_file(coco: dict) -> dict[str, list[tuple[str, list[float]]]]:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    out: dict[str, list] = {f: [] for f in files.values()}
    for a in coco["annotations"]:
        out[files[a["image_id"]]].append((names[a["category_id"]], a["bbox"]))
    return out


def voc_xml(filename: str, size: tuple[int, int] | None, objects: str) -> str:
    sz = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    return (f"<?xml version='1.0'?>\n<annotation><folder>x</folder><filename>{filename}</filename>{sz}"
            f"<!-- a comment kept on write -->{objects}</annotation>\n")


def voc_object(name: str, corners: tuple, extra: str = "") -> str:
    xmin, ymin, xmax, ymax = corners
    return (f"<object><name>{name}</name><difficult>0</difficult>{extra}<bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels><label><name>car</name></label></labels></task></meta>
  <image id="0" name="a.jpg" width="80" height="60">
    <box label="car" source="manual" occluded="1" xtl="14.50" ytl="11.25" xbr="55.50" ybr="42.00" z_order="0">
      <attribute name="color">red</attribute>
    </box>
    <polygon label="car" points="1,1;5,1;5,5" occluded="0"/>
    <box label="car" occluded="0" xtl="90" ytl="10" xbr="120" ybr="30"/>
  </image>
  <image id="1" name="b.png" width="100" height="70">
    <box label="car" occluded="0" xtl="60.125" ytl="30" xbr="100" ybr="70"/>
  </image>
</annotations>
"""


def jittered(box: list[float], rng: np.random.Generator, px: float = 2.0) -> dict:
    x, y, w, h = (float(v) + float(d) for v, d in zip(box, rng.uniform(-px, px, 4)))
    return {"left": round(x, 2), "top": round(y, 2), "width": round(w, 2), "height": round(h, 2)}


def gt_manifest(path: Path, attr: str = "my-job", workers: int = 5, seed: int = 0) -> dict:
    """A manifest with worker responses (``workers`` per object), a line with several workers'
    boxes as annotations with ``worker_id``, and a plain line with a box outside its image.
    Returns facts the tests check: boxes per line, objects per line."""
    rng = np.random.default_rng(seed)
    objs = {"a.jpg": [("car", [15, 12, 40, 28]), ("person", [50, 30, 20, 25])], "b.png": [("car", [20, 15, 50, 40])]}
    lines = []
    for name, objects in objs.items():
        w, h, _ = IMAGES[name]
        answers = [{"workerId": f"private.w{k}", "answerContent": {"boundingBox": {
            "boundingBoxes": [{"label": label, **jittered(box, rng)} for label, box in objects],
            "inputImageProperties": {"width": w, "height": h}}}} for k in range(workers)]
        lines.append({"source-ref": f"s3://bucket/raw/{name}", attr: {"answers": answers},
                      f"{attr}-metadata": {"class-map": {"0": "car", "1": "person"}}})
    anns = [{"class_id": 0, "worker_id": f"w{k}", **jittered([16, 13, 38, 26], rng)} for k in range(3)]
    lines.append({"source-ref": "s3://bucket/raw/a.jpg", attr: {"annotations": anns, "image_size": [
        {"width": 80, "height": 60, "depth": 3}]}, f"{attr}-metadata": {"class-map": {"0": "car"}, "job-name": "j"}})
    lines.append({"source-ref": "b.png", attr: {"annotations": [
        {"class_id": 0, "left": 20, "top": 15, "width": 50, "height": 40},
        {"class_id": 0, "left": 500, "top": 10, "width": 5, "height": 5}],
        "image_size": [{"width": 100, "height": 70, "depth": 3}]}, f"{attr}-metadata": {"class-map": {"0": "car"}}})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"lines": lines, "n_boxes": 2 * workers + workers + 3 + 2, "n_objects": 4}
