"""End to end with a real Label Studio: project, connected backend, a drawn rectangle, the
snapped one back (and pre-annotation of an annotated task).

    .venv/bin/python experiments/labelstudio_e2e.py            # installs Label Studio on first use
    .venv/bin/python experiments/labelstudio_e2e.py --serve --files IMAGES_PARENT   # = make labelstudio

Label Studio (PyPI ``label-studio``) goes into its own venv, ``/tmp/labelstudio_venv`` (never
into ``.venv``: it pins numpy and Django's stack). Everything runs on loopback in a temporary
folder: Label Studio (legacy API token, local files served from the folder, ML backends on
local addresses allowed: ``ML_BLOCK_LOCAL_IP=false`` and ``SSRF_PROTECTION_ENABLED=false``), and ``snapper label-studio`` on an
untrained tiny model. The check is the plumbing: the answer is a rectangle of the same
control and label, in percent, with a score and the four edge confidences.
"""

from __future__ import annotations

import argparse
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

from snapper.config import ModelConfig
from snapper.models.checkpoint import save_checkpoint
from snapper.models.net import build_model

LS_VENV = Path(os.environ.get("LS_VENV", "/tmp/labelstudio_venv"))
LS_PORT, BACKEND_PORT = 8089, 9099
SERVE_USER, SERVE_PASSWORD = "reviewer@example.com", "snapper-review"  # make labelstudio: a local, loopback-only server
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


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def ls_env(data_dir: Path, files_root: Path, token: str, port: int = LS_PORT) -> dict[str, str]:
    """Label Studio's environment: local files served from ``files_root`` (``snapper review push``
    refers to images there), ML backends and webhooks on loopback allowed."""
    return {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",  # else the backend's /webhook is refused when it is saved
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root), "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "DO_NOT_TRACK": "1", "LABEL_STUDIO_URL": f"http://127.0.0.1:{port}", "LABEL_STUDIO_API_KEY": token,
            "OMP_NUM_THREADS": "1"}


def start_label_studio(data_dir: Path, env: dict[str, str], token: str, log, username: str = "e2e@example.com",
                       password: str | None = None, port: int = LS_PORT) -> subprocess.Popen:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"port {port} is in use (an earlier run still up?); stop it first")
    return subprocess.Popen([str(install()), "start", "--no-browser", "--port", str(port), "--data-dir", str(data_dir),
                             "--username", username, "--password", password or secrets.token_hex(8),
                             "--user-token", token, "--enable-legacy-api-token"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.contextmanager
def label_studio(tmp: Path, token: str, files_root: Path | None = None, username: str = "e2e@example.com",
                 password: str | None = None) -> Iterator[str]:
    """Label Studio alone (data in ``tmp/ls``, local files from ``files_root``, default
    ``tmp/files``) on loopback; yields its URL and stops it on exit (log tail on failure)."""
    env = ls_env(tmp / "ls", files_root or tmp / "files", token)
    with open(tmp / "ls.log", "wb") as log:
        ls = start_label_studio(tmp / "ls", env, token, log, username, password)
        try:
            wait(f"http://127.0.0.1:{LS_PORT}/health", ls, 600)
            yield f"http://127.0.0.1:{LS_PORT}"
        except BaseException:
            print((tmp / "ls.log").read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            _stop([ls])


@contextlib.contextmanager
def services(tmp: Path, model: str, token: str, username: str = "e2e@example.com",
             password: str | None = None, passes: int = 1) -> Iterator[tuple[str, dict]]:
    """Label Studio (data in ``tmp/ls``, local files served from ``tmp/files``) and
    ``snapper label-studio`` on ``model``, both on loopback; yields (API URL, auth headers)
    and stops both on exit, printing their log tails when the body failed."""
    env = ls_env(tmp / "ls", tmp / "files", token)
    if os.environ.get("LS_E2E_DEFAULT_SSRF"):  # to see what Label Studio's defaults refuse
        env.pop("ML_BLOCK_LOCAL_IP")  # 1.23.2: POST /api/ml -> 403 "URL resolves to a reserved network address"
        env.pop("SSRF_PROTECTION_ENABLED")  # the same 403, from the webhook Label Studio adds for the backend
    logs = {n: open(tmp / f"{n}.log", "wb") for n in ("ls", "backend")}
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", BACKEND_PORT)) == 0:
            raise RuntimeError(f"port {BACKEND_PORT} is in use (an earlier run still up?); stop it first")
    ls = start_label_studio(tmp / "ls", env, token, logs["ls"], username, password)
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
        _stop([backend, ls])


def serve(files_root: Path, data_dir: Path, port: int) -> int:
    """``make labelstudio``: Label Studio in the foreground for ``snapper review`` (local files
    from ``files_root``), with a fixed user and token kept in ``data_dir``; Ctrl-C stops it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    token_file = data_dir / "snapper-token"
    if not token_file.exists():
        token_file.write_text(secrets.token_hex(20))
    token = token_file.read_text().strip()
    env = ls_env(data_dir, files_root.resolve(), token, port)
    print(f"Label Studio on http://127.0.0.1:{port} (user {SERVE_USER}, password {SERVE_PASSWORD}); local files "
          f"from {files_root.resolve()}\n  export LABEL_STUDIO_URL=http://127.0.0.1:{port} LABEL_STUDIO_API_KEY={token} "
          f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={files_root.resolve()}", flush=True)
    ls = start_label_studio(data_dir, env, token, None, SERVE_USER, SERVE_PASSWORD, port)
    try:
        return ls.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop([ls])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", action="store_true", help="only run Label Studio in the foreground (make labelstudio)")
    p.add_argument("--files", type=Path, default=Path.cwd(), help="--serve: folder served as local files (images)")
    p.add_argument("--data", type=Path, default=ROOT / ".labelstudio", help="--serve: Label Studio's data folder")
    p.add_argument("--port", type=int, default=8080, help="--serve: port (default 8080)")
    args = p.parse_args()
    if args.serve:
        return serve(args.files, args.data, args.port)
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
