"""Latency of the snap service: one-box requests to MLflow's model server, p50/p95.

What a client sees for one rough box: JSON with the image bytes (base64) in, snapped box and
per-edge confidence out, over HTTP on loopback; decode, crop, model and JSON included.

    .venv/bin/python bench/bench_serve.py                          # demo-preset model, untrained
    .venv/bin/python bench/bench_serve.py --model models:/snapper@champion --requests 200

By default the model is the ``demo`` preset's architecture (what ``make demo`` registers),
untrained: latency does not depend on the weights. It is registered in a temporary MLflow
store and served exactly as ``snapper serve`` does (``mlflow models serve --env-manager local``,
one worker). ``--model`` serves a registered model of the project's store instead.

The image: the first photo of ``../shared/data/coco128-train`` (640x480 JPEG) and its first
box when present, else a generated 640x480 JPEG. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snapper.mlops.pyfunc import request_json  # noqa: E402
from snapper.mlops.tracking import configure  # noqa: E402
from snapper.models.checkpoint import save_checkpoint  # noqa: E402
from snapper.models.net import build_model  # noqa: E402
from snapper.training.presets import preset_config  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "coco128-train"


def photo() -> tuple[bytes, list[float], str]:
    if (DATA / "annotations.json").is_file():
        coco = json.loads((DATA / "annotations.json").read_text())
        first = coco["images"][0]
        box = next(a["bbox"] for a in coco["annotations"] if a["image_id"] == first["id"])
        return (DATA / "images" / first["file_name"]).read_bytes(), box, f"coco128-train/{first['file_name']}"
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    img[120:360, 160:480] = (220, 140, 60)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue(), [150.0, 110.0, 340.0, 260.0], "generated 640x480 JPEG"


def temp_store(home: Path, preset: str) -> str:
    """The preset's model, untrained, registered as models:/bench/1 in a store under ``home``."""
    torch.manual_seed(0)
    cfg = preset_config(preset).model
    ck = save_checkpoint(home / "ckpt", build_model(cfg), cfg)
    code = ("from snapper.mlops import registry, tracking\n"
            "with tracking.start_run('bench-serve'):\n"
            f"    registry.register_checkpoint(None, {str(ck)!r}, 'bench')\n")
    env = {**os.environ, "SNAPPER_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, cwd=ROOT)
    return f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"


def post(url: str, body: bytes) -> float:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 - loopback
        r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
    return time.perf_counter() - t


def wait_up(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):  # noqa: S310
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError("server not up")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a registered model of the project's store (default: untrained --preset model)")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--port", type=int, default=5097)
    a = ap.parse_args()
    data, box, image_name = photo()
    body = json.dumps(request_json(base64.b64encode(data).decode(), [box])).encode()
    with tempfile.TemporaryDirectory() as tmp:
        if a.model:
            model, uri = a.model, configure()
        else:
            model, uri = "models:/bench/1", temp_store(Path(tmp), a.preset)
        log = open(Path(tmp) / "server.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "snapper.cli", "serve", "--model", model, "--port", str(a.port)],
                                env={**os.environ, "MLFLOW_TRACKING_URI": uri}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            t0 = time.perf_counter()
            wait_up(a.port, proc)
            startup = time.perf_counter() - t0
            url = f"http://127.0.0.1:{a.port}/invocations"
            for _ in range(a.warmup):
                post(url, body)
            lat = sorted(post(url, body) for _ in range(a.requests))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            log.close()
    q = statistics.quantiles(lat, n=100)
    print(json.dumps({
        "model": a.model or f"{a.preset} preset (untrained)", "image": image_name, "image_kb": round(len(data) / 1024),
        "boxes_per_request": 1, "requests": a.requests, "server_start_s": round(startup, 1),
        "p50_ms": round(1000 * statistics.median(lat), 1), "p95_ms": round(1000 * q[94], 1),
        "max_ms": round(1000 * lat[-1], 1)
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
