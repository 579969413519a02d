"""Peak memory of batch snapping on 12 MP photos, against the size of one decoded image.

Generates ``--images`` 4000x3000 JPEGs (smooth shading and rectangles, like photos in
size, not content) with rough boxes of several sizes, plus one 10000x10000 1-bit PNG of 12 KB
(the decompression case: 100 MP, over the default pixel budget), then runs
:func:`snapper.batch.batch_snap` once per setting, each in a fresh process, and reports the
peak resident memory from ``resource.getrusage``:

* ``main_before_mb``: the snapping process after imports and loading the model;
* ``main_peak_mb`` / ``main_added_mb``: its peak during the run, and the peak minus that;
* ``workers_peak_mb``: the largest decoding worker (``RUSAGE_CHILDREN``; 0 with no workers),
  pages shared with the main process it was forked from included;
* ``decode_only``: the peak added by one ``load_image`` of one photo in a fresh process, in
  full and at the 1/4 draft scale (what the decode itself costs, without model or crops);

next to ``decoded_image_mb``, the RGB size of one full-resolution decode (36 MB for 12 MP),
which ``decode_only`` shows is what a decode costs. The rest of the added peak is the model's
forward pass over one batch of crops (``--batch-size``) and the merge, not the photos: images
are decoded one at a time (per worker) and only their small crops wait for a full batch. The
oversized PNG is kept as ``image_too_large`` without being decoded; ``decode_only`` also shows
what decoding it would have cost (``max_pixels=None``).

    .venv/bin/python bench/bench_snap_memory.py [--images 6] [--boxes 6] [--device cpu]

The model is the ``cpu`` preset's architecture, untrained (memory does not depend on the
weights). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snapper.batch import batch_snap  # noqa: E402
from snapper.batch.chunk import get_snapper  # noqa: E402
from snapper.config import BatchConfig, ModelConfig, SnapSettings  # noqa: E402
from snapper.imageio import load_image  # noqa: E402
from snapper.models.checkpoint import save_checkpoint  # noqa: E402
from snapper.models.net import build_model  # noqa: E402
from snapper.training.presets import PRESETS  # noqa: E402

W, H = 4000, 3000
MB = 1024.0  # ru_maxrss is in KiB on Linux


def photo(path: Path, rects: list[list[int]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = (40 + 60 * (xx / W) + 40 * (yy / H)).astype(np.uint8)
    arr = np.repeat(base[:, :, None], 3, axis=2)
    for x, y, w, h in rects:
        arr[y : y + h, x : x + w] = rng.integers(120, 250, size=3, dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=90)


def make_set(root: Path, n_images: int, n_boxes: int, seed: int = 0) -> tuple[Path, Path, int]:
    """(rough.json, images folder, annotations): boxes from 2% to 40% of the width, jittered."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    coco: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    ann_id = 1
    for i in range(n_images):
        rects = []
        for k in range(n_boxes):
            w = int(W * (0.02 + 0.38 * k / max(1, n_boxes - 1)))
            h = int(w * rng.uniform(0.5, 1.0))
            x, y = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
            rects.append([x, y, w, h])
        photo(images / f"{i:04d}.jpg", rects, seed + i)
        coco["images"].append({"id": i + 1, "file_name": f"{i:04d}.jpg", "width": W, "height": H})
        for x, y, w, h in rects:
            j = rng.uniform(-0.05, 0.05, size=4) * [w, h, w, h]
            coco["annotations"].append({"id": ann_id, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                        "bbox": [round(float(v), 2) for v in np.add([x, y, w, h], j)]})
            ann_id += 1
    Image.new("1", (10000, 10000)).save(images / "huge.png")  # 12 KB, 100 MP
    coco["images"].append({"id": n_images + 1, "file_name": "huge.png", "width": 10000, "height": 10000})
    coco["annotations"] += [{"id": ann_id + k, "image_id": n_images + 1, "category_id": 1, "iscrowd": 0,
                             "bbox": [100 + 2000 * k, 100, 500, 400]} for k in range(2)]
    rough = root / "rough.json"
    rough.write_text(json.dumps(coco))
    return rough, images, len(coco["annotations"])


def decode_child(path: str, min_scale: float, budget: bool) -> int:
    """Peak added by decoding one image in this fresh process (``budget``: the default pixel
    budget, else none)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kw = {} if budget else {"max_pixels": None}
    li = load_image(path, min_scale=min_scale, **kw)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"image": Path(path).name, "min_scale": min_scale, "max_pixels": "default" if budget else None,
                      "decoded": f"{li.tensor.shape[2]}x{li.tensor.shape[1]}",
                      "added_mb": round((peak - before) / MB, 1)}))
    return 0


def child(args: argparse.Namespace) -> int:
    """One run in this fresh process; prints its measurements as JSON."""
    cfg = BatchConfig(workers=args.workers, draft_decode=not args.no_draft, chunk_images=args.chunk_images,
                      snap=SnapSettings(device=args.device, batch_size=args.batch_size))
    get_snapper(args.ckpt, cfg.snap)  # load the model before measuring
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = batch_snap(args.rough, args.images_dir, args.out, args.ckpt, cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"workers": args.workers, "draft_decode": not args.no_draft,
                      "main_before_mb": round(before / MB, 1), "main_peak_mb": round(peak / MB, 1),
                      "main_added_mb": round((peak - before) / MB, 1),
                      "workers_peak_mb": round(children / MB, 1) if args.workers else 0.0,
                      "snapped": r.summary["status"]["snapped"], "kept": r.summary["reasons"]}))
    return 0


def fresh_process(args: list[str]) -> dict:
    """Run this script with ``args`` and return the JSON line it prints. Through a shell that
    forks: a process started straight from this one would inherit this one's peak (Linux keeps
    ``ru_maxrss`` across vfork + exec)."""
    cmd = [sys.executable, __file__, *args]
    p = subprocess.run(["sh", "-c", '"$@"; exit $?', "sh", *cmd], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--boxes", type=int, default=6, help="rough boxes per photo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=BatchConfig().snap.batch_size)
    ap.add_argument("--chunk-images", type=int, default=BatchConfig().chunk_images)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("rough", "images-dir", "out", "ckpt"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--no-draft", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--decode", help=argparse.SUPPRESS)
    ap.add_argument("--min-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    ap.add_argument("--no-budget", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.decode:
        return decode_child(a.decode, a.min_scale, not a.no_budget)
    if a.child:
        return child(a)
    with tempfile.TemporaryDirectory(prefix="bench-snap-mem-") as tmp:
        root = Path(tmp)
        rough, images, n_ann = make_set(root / "data", a.images, a.boxes)
        mcfg = ModelConfig(**PRESETS["cpu"]["model"])
        torch.manual_seed(0)
        ckpt = save_checkpoint(root / "ckpt", build_model(mcfg), mcfg)
        runs = []
        for k, (workers, draft) in enumerate([(0, True), (0, False), (2, True)]):
            cmd = ["--child", "--rough", str(rough), "--images-dir", str(images),
                   "--out", str(root / f"out{k}"), "--ckpt", str(ckpt), "--workers", str(workers),
                   "--device", a.device, "--batch-size", str(a.batch_size), "--chunk-images", str(a.chunk_images)]
            runs.append(fresh_process(cmd + ([] if draft else ["--no-draft"])))
        decode = [fresh_process(["--decode", str(images / "0000.jpg"), "--min-scale", str(m)]) for m in (1.0, 0.25)]
        decode.append(fresh_process(["--decode", str(images / "huge.png"), "--no-budget"]))
    report = {
        "photos": a.images, "photo_size": f"{W}x{H}", "boxes_per_photo": a.boxes, "annotations": n_ann,
        "oversized": "one 10000x10000 1-bit PNG (12 KB) with 2 boxes",
        "decoded_image_mb": round(W * H * 3 / 2**20, 1),
        "pixel_budget": BatchConfig().max_pixels,
        "model": {"trunk": mcfg.trunk, "input_size": mcfg.input_size},
        "batch_size": a.batch_size, "runs": runs, "decode_only": decode,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
