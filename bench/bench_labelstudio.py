"""Latency of one interactive Label Studio request: a drawn rectangle in, the snapped one out.

    .venv/bin/python bench/bench_labelstudio.py                  # cpu-preset model, untrained
    .venv/bin/python bench/bench_labelstudio.py --requests 200

What Label Studio waits for after the annotator lets go of the mouse: ``POST /predict`` with
the task, the labeling config and ``params.context`` (the drawn rectangle, in percent), over
HTTP on loopback to the backend's own app (werkzeug, one thread), the image read from the
local-files folder, decoded, cropped, snapped and answered in percent. One torch thread.
The model is the ``cpu`` preset's architecture with ``weights: None`` (untrained: timing does
not depend on the weights). The p50 is set beside the model's own forward pass on one crop
(``Snapper.predict_crops``, batch 1), as a ratio: what the backend adds on top of the model.

The image: the first photo of ``../shared/data/coco128-train`` and its first box when
present, else a generated 640x480 JPEG. Prints one JSON object. Issue #14's target: p50 < 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snapper.config import ModelConfig  # noqa: E402
from snapper.inference.snap import Snapper  # noqa: E402
from snapper.integrations.labelstudio import SnapperBackend, create_app  # noqa: E402
from snapper.models.checkpoint import save_checkpoint  # noqa: E402
from snapper.models.net import build_model  # noqa: E402
from snapper.training.presets import PRESETS  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "coco128-train"
TARGET_S = 0.3
LABEL_CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image" smart="true">'
                '<Label value="object"/></RectangleLabels></View>')


def photo(tmp: Path) -> tuple[Path, str, list[float], str]:
    """(document root, path under it, drawn box xywh px, description)."""
    if (DATA / "annotations.json").is_file():
        coco = json.loads((DATA / "annotations.json").read_text())
        first = coco["images"][0]
        box = next(a["bbox"] for a in coco["annotations"] if a["image_id"] == first["id"])
        return DATA, f"images/{first['file_name']}", box, f"coco128-train/{first['file_name']}"
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    img[120:360, 160:480] = (220, 140, 60)
    (tmp / "images").mkdir()
    Image.fromarray(img).save(tmp / "images" / "photo.jpg", format="JPEG", quality=90)
    return tmp, "images/photo.jpg", [150.0, 110.0, 340.0, 260.0], "generated 640x480 JPEG"


def request_body(rel: str, box: list[float], width: int, height: int) -> dict:
    x, y, w, h = box
    region = {"id": "drawn", "from_name": "label", "to_name": "image", "type": "rectanglelabels", "origin": "manual",
              "original_width": width, "original_height": height, "image_rotation": 0,
              "value": {"x": x / width * 100, "y": y / height * 100, "width": w / width * 100,
                        "height": h / height * 100, "rotation": 0, "rectanglelabels": ["object"]}}
    return {"tasks": [{"id": 1, "data": {"image": f"/data/local-files/?d={rel}"}, "annotations": [], "predictions": []}],
            "project": "1.1700000000", "label_config": LABEL_CONFIG, "params": {"context": {"result": [region]}}}


def forward_ms(snapper: Snapper, size: int, n: int) -> float:
    crop = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        snapper.predict_crops(crop)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        snapper.predict_crops(crop)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--port", type=int, default=9197)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    cfg = ModelConfig(**{**PRESETS["cpu"]["model"], "weights": None})
    with tempfile.TemporaryDirectory(prefix="bench-ls-") as tmp:
        root, rel, box, name = photo(Path(tmp))
        os.environ["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] = str(root)
        snapper = Snapper.from_checkpoint(save_checkpoint(Path(tmp) / "ckpt", build_model(cfg), cfg), device="cpu")
        server = make_server("127.0.0.1", a.port, create_app(SnapperBackend(snapper, "bench")))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with Image.open(root / rel) as im:
            width, height = im.size
        body = request_body(rel, box, width, height)
        url = f"http://127.0.0.1:{a.port}/predict"
        times = []
        with requests.Session() as s:
            for i in range(a.warmup + a.requests):
                t = time.perf_counter()
                r = s.post(url, json=body, timeout=60)
                dt = time.perf_counter() - t
                r.raise_for_status()
                if i >= a.warmup:
                    times.append(dt)
        server.shutdown()
        fwd = forward_ms(snapper, cfg.input_size, a.requests)
    p50, p95 = (1000 * float(np.quantile(times, q)) for q in (0.5, 0.95))
    print(json.dumps({"bench": "labelstudio_interactive", "image": name, "image_size": [width, height],
                      "model": "cpu preset, untrained", "input_size": cfg.input_size, "torch_threads": 1,
                      "requests": len(times), "p50_ms": round(p50, 1), "p95_ms": round(p95, 1),
                      "model_forward_p50_ms": round(fwd, 1), "p50_over_forward": round(p50 / fwd, 2),
                      "target_p50_ms": 1000 * TARGET_S, "target_met": p50 < 1000 * TARGET_S}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
