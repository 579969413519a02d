"""End to end with a real Label Studio: project, connected backend, a drawn rectangle, the
snapped one back (and pre-annotation of an annotated task).

    .venv/bin/python experiments/labelstudio_e2e.py            # installs Label Studio on first use

Label Studio (PyPI ``label-studio``) goes into its own venv, ``/tmp/labelstudio_venv`` (never
into ``.venv``: it pins numpy and Django's stack). Everything runs on loopback in a temporary
folder: Label Studio (legacy API token, local files served from the folder, ML backends on
local addresses allowed: ``ML_BLOCK_LOCAL_IP=false`` and ``SSRF_PROTECTION_ENABLED=false``), and ``snapper label-studio`` on an
untrained tiny model. The check is the plumbing: the answer is a rectangle of the same
control and label, in percent, with a score and the four edge confidences.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snapper.config import ModelConfig  # noqa: E402
from snapper.models.checkpoint import save_checkpoint  # noqa: E402
from snapper.models.net import build_model  # noqa: E402

LS_VENV = Path(os.environ.get("LS_VENV", "/tmp/labelstudio_venv"))
LS_PORT, BACKEND_PORT = 8089, 9099
W, H = 320, 240
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image" smart="true">
    <Label value="Box" background="green"/>
  </RectangleLabels>
</View>"""


def install() -> Path:
    exe = LS_VENV / "bin" / "label-studio"
    if not exe.exists():
        t = time.time()
        subprocess.run([sys.executable, "-m", "venv", str(LS_VENV)], check=True)
        # sentry-sdk 3 drops an option Label Studio 1.23 passes at start-up (TypeError: Unknown option)
        subprocess.run([str(LS_VENV / "bin" / "pip"), "install", "-q", "label-studio", "sentry-sdk<3"], check=True)
        print(f"installed label-studio in {time.time() - t:.0f} s", flush=True)
    return exe


def wait(url: str, proc: subprocess.Popen, timeout: float, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited {proc.returncode}")
        try:
            if requests.get(url, headers=headers, timeout=5).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(2)
    raise RuntimeError(f"{url} not up after {timeout:.0f} s")


def region(x: float, y: float, w: float, h: float) -> dict:
    return {"id": secrets.token_hex(5), "from_name": "label", "to_name": "image", "type": "rectanglelabels",
            "origin": "manual", "original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"x": x / W * 100, "y": y / H * 100, "width": w / W * 100, "height": h / H * 100,
                      "rotation": 0, "rectanglelabels": ["Box"]}}


def check_region(r: dict) -> None:
    assert r["type"] == "rectanglelabels" and r["from_name"] == "label" and r["to_name"] == "image", r
    assert r["value"]["rectanglelabels"] == ["Box"], r
    assert all(0 <= r["value"][k] <= 100 for k in ("x", "y", "width", "height")), r
    assert set(r["meta"]["confidence"]) == {"left", "top", "right", "bottom"} and "score" in r, r


def scenario(api: str, headers: dict, image_ref: str) -> dict:
    s = requests.Session()
    s.headers.update(headers)
    project = s.post(f"{api}/projects", json={"title": "snapper e2e", "label_config": LABEL_CONFIG}, timeout=60)
    project.raise_for_status()
    pid = project.json()["id"]
    ml = s.post(f"{api}/ml", json={"url": f"http://127.0.0.1:{BACKEND_PORT}", "project": pid, "title": "snapper",
                                   "is_interactive": True}, timeout=60)
    assert ml.status_code in (200, 201), ml.text
    ml_id = ml.json()["id"]
    s.post(f"{api}/projects/{pid}/import", json=[{"image": image_ref}], timeout=60).raise_for_status()
    task_id = s.get(f"{api}/tasks", params={"project": pid}, timeout=60).json()["tasks"][0]["id"]
    old, new = region(10, 10, 40, 30), region(70, 50, 190, 150)  # the newest is around the object
    t = time.perf_counter()
    r = s.post(f"{api}/ml/{ml_id}/interactive-annotating", json={"task": task_id, "context": {"result": [old, new]}},
               timeout=120)
    seconds = time.perf_counter() - t
    r.raise_for_status()
    answer = r.json()
    assert "errors" not in answer, answer
    [snapped] = answer["data"]["result"]
    check_region(snapped)
    assert snapped["meta"]["rough_id"] == new["id"], snapped
    # Pre-annotation: an annotation with a rough box, then "Retrieve predictions".
    s.post(f"{api}/tasks/{task_id}/annotations", json={"result": [region(70, 50, 190, 150)]},
           timeout=60).raise_for_status()
    s.post(f"{api}/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
           json={"selectedItems": {"all": True, "excluded": []}}, timeout=120).raise_for_status()
    preds = s.get(f"{api}/predictions", params={"task": task_id}, timeout=60).json()
    assert preds and preds[-1]["result"], preds
    check_region(preds[-1]["result"][0])
    return {"interactive_seconds_via_label_studio": round(seconds, 3), "snapped": snapped["value"],
            "score": snapped["score"], "prediction_model_version": preds[-1].get("model_version")}


@contextlib.contextmanager
def services(tmp: Path, model: str, token: str, username: str = "e2e@example.com",
             password: str | None = None, passes: int = 1) -> Iterator[tuple[str, dict]]:
    """Label Studio (data in ``tmp/ls``, local files served from ``tmp/files``) and
    ``snapper label-studio`` on ``model``, both on loopback; yields (API URL, auth headers)
    and stops both on exit, printing their log tails when the body failed."""
    exe = install()
    for port in (LS_PORT, BACKEND_PORT):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise RuntimeError(f"port {port} is in use (an earlier run still up?); stop it first")
    env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "ML_BLOCK_LOCAL_IP": "false",
           "SSRF_PROTECTION_ENABLED": "false",  # else the backend's /webhook is refused when it is saved
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(tmp / "files"),
           "LABEL_STUDIO_BASE_DATA_DIR": str(tmp / "ls"), "DO_NOT_TRACK": "1",
           "LABEL_STUDIO_URL": f"http://127.0.0.1:{LS_PORT}", "LABEL_STUDIO_API_KEY": token, "OMP_NUM_THREADS": "1"}
    if os.environ.get("LS_E2E_DEFAULT_SSRF"):  # to see what Label Studio's defaults refuse
        env.pop("ML_BLOCK_LOCAL_IP")  # 1.23.2: POST /api/ml -> 403 "URL resolves to a reserved network address"
        env.pop("SSRF_PROTECTION_ENABLED")  # the same 403, from the webhook Label Studio adds for the backend
    logs = {n: open(tmp / f"{n}.log", "wb") for n in ("ls", "backend")}
    ls = subprocess.Popen([str(exe), "start", "--no-browser", "--port", str(LS_PORT), "--data-dir", str(tmp / "ls"),
                           "--username", username, "--password", password or secrets.token_hex(8),
                           "--user-token", token, "--enable-legacy-api-token"], env=env, stdout=logs["ls"],
                          stderr=subprocess.STDOUT, start_new_session=True)
    backend = subprocess.Popen([sys.executable, "-m", "snapper.cli.labelstudio", "--model", model,
                                "--port", str(BACKEND_PORT), "--threads", "1", "--passes", str(passes)], env=env, cwd=ROOT,
                               stdout=logs["backend"], stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t = time.time()
        wait(f"http://127.0.0.1:{BACKEND_PORT}/health", backend, 300)
        wait(f"http://127.0.0.1:{LS_PORT}/health", ls, 600)
        print(f"services up in {time.time() - t:.0f} s", flush=True)
        yield f"http://127.0.0.1:{LS_PORT}/api", {"Authorization": f"Token {token}"}
    except BaseException:
        for n in logs:
            print(f"--- {n}.log (tail)", file=sys.stderr)
            print((tmp / f"{n}.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        for p in (backend, ls):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ls-e2e-") as tmp:
        tmp_p = Path(tmp)
        (tmp_p / "files" / "images").mkdir(parents=True)
        arr = (np.random.default_rng(0).random((H, W, 3)) * 40).astype(np.uint8)
        arr[60:180, 80:240] = (220, 140, 60)
        Image.fromarray(arr).save(tmp_p / "files" / "images" / "photo.png")
        torch.manual_seed(0)
        cfg = ModelConfig(trunk="resnet18", input_size=48, fpn_channels=16, decoder_channels=16, decoder_layers=2)
        ckpt = save_checkpoint(tmp_p / "ckpt", build_model(cfg), cfg)
        with services(tmp_p, str(ckpt), secrets.token_hex(20)) as (api, headers):
            result = scenario(api, headers, "/data/local-files/?d=images/photo.png")
        print(json.dumps({"e2e": "ok", **result}))
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
