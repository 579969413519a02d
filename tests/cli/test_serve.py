"""``snapper serve``: the champion behind MLflow's scoring app, from a fresh environment (no
PATH set up by hand), answering a real image over HTTP, refusing a bad request with a 400
that names the row and a body over the limit with a 413, and stopping on one signal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from snapper import cli
from snapper.config import ModelConfig
from snapper.inference.snap import Snapper
from snapper.mlops.pyfunc import encode_image, request_json
from snapper.models.checkpoint import save_checkpoint
from snapper.models.net import build_model
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 240  # s: the server imports torch and loads the model (~40 s on a busy 2-core box)


@pytest.fixture
def photo(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, list[float]]:
    """A real photo with a COCO box (../shared/data through its fixture), else a generated one."""
    try:
        data = request.getfixturevalue("shared_data") / "coco128-train"
    except pytest.skip.Exception:
        img = np.zeros((96, 128, 3), np.uint8)
        img[20:70, 30:100] = (200, 120, 40)
        Image.fromarray(img).save(tmp_path / "generated.png")
        return tmp_path / "generated.png", [30.0, 20.0, 70.0, 50.0]
    coco = json.loads((data / "annotations.json").read_text())
    first = coco["images"][0]
    box = next(a["bbox"] for a in coco["annotations"] if a["image_id"] == first["id"])
    return data / "images" / first["file_name"], [float(v) for v in box]


def _store_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "_MLFLOW_SERVER_ARTIFACT_ROOT")}
    # A bare PATH, as in a fresh clone with no venv activated: the command must find uvicorn itself.
    env.update({"SNAPPER_HOME": str(home), "PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"})
    return env


def _register_champion(home: Path) -> None:
    """A tiny untrained model registered as snapper@champion in ``home``'s store (a subprocess,
    so this test's own MLflow configuration stays untouched)."""
    torch.manual_seed(0)
    cfg = ModelConfig(trunk="resnet18", input_size=32, fpn_channels=8, decoder_channels=8, decoder_layers=1)
    ck = save_checkpoint(home / "ck", build_model(cfg), cfg)
    code = ("from snapper.mlops import registry, tracking\n"
            "with tracking.start_run('serve-test') as run:\n"
            f"    v = registry.register_checkpoint(None, {str(ck)!r}, 'snapper')\n"
            "registry.mlflow_client().set_registered_model_alias('snapper', 'champion', str(v))\n")
    subprocess.run([sys.executable, "-c", code], env=_store_env(home), cwd=REPO, check=True, capture_output=True,
                   timeout=300)


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 - loopback
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait_until_up(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"snapper serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:  # noqa: S310
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"server not up after {START_TIMEOUT}s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_serves_the_champion_over_http(tmp_path: Path, photo: tuple[Path, list[float]]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    _register_champion(home)
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "snapper.cli", "serve", "--port", str(port), "--max-body-mb", "1"],
                                cwd=REPO,
                                env=_store_env(home), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(port, proc, log)
        assert "snapper version 1 (@champion)" in log.read_text()
        image, box = photo
        url = f"http://127.0.0.1:{port}/invocations"
        status, body = _post(url, request_json(encode_image(image), [box]))
        assert status == 200, body
        (pred,) = body["predictions"]
        assert set(pred) == {"x", "y", "w", "h", "conf_left", "conf_top", "conf_right", "conf_bottom", "guard"}
        guard = pred.pop("guard")  # the broken-box guard's verdict: "", "collapsed" or "moved:<edges>"
        assert guard == "" or guard.split(":")[0] in ("collapsed", "moved")
        assert all(np.isfinite(v) for v in pred.values()) and pred["w"] >= 1 and 0 <= pred["conf_left"] <= 1
        bad = request_json(encode_image(image), [box, [1e6, 1e6, 5, 5]])
        status, body = _post(url, bad)
        assert status == 400 and body["row"] == 1, body
        assert body["cause"].startswith("row 1: box [1000000.0, 1000000.0, 5.0, 5.0] is unusable (outside_image)")
        status, body = _post(url, request_json(encode_image(image), [box], passes=2))  # a request param
        assert status == 400 and body["cause"].startswith("params.passes=2: the served model supports passes=1"), body
        status, body = _post(url, request_json(encode_image(image), [box], flip=True))  # a boolean request param
        assert status == 200, body
        flipped = Snapper.from_checkpoint(home / "ck", device="cpu", flip=True).snap(image, [box])
        np.testing.assert_allclose([body["predictions"][0][k] for k in "xywh"], flipped.boxes[0], atol=1e-3)
        conf = [f"conf_{e}" for e in ("left", "top", "right", "bottom")]
        np.testing.assert_allclose([body["predictions"][0][k] for k in conf], flipped.confidence[0], rtol=1e-4, atol=1e-6)
        # the param did reach the model (confidence: the broken-box guard may give both the rough box back)
        assert not np.allclose(flipped.confidence[0], [pred[k] for k in conf], rtol=1e-3, atol=1e-6)
        _refusals_carry_one_line(url, encode_image(image), box)
        proc.send_signal(signal.SIGTERM)  # the command's own pid, as `kill` would: nothing may survive it
        assert proc.wait(timeout=60) is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # before: mlflow/uvicorn children kept answering /ping
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _refusals_carry_one_line(url: str, image_b64: str, box: list[float]) -> None:
    """A body over the limit is a 413, a missing column or an absurd box a 400, each with a
    one-line ``cause`` (before: no 413 at all; MLflow's message with the whole dataframe; a
    stack trace as the 400's body)."""
    status, body = _post(url, request_json("A" * (2 << 20), [box]))
    assert status == 413 and "over this server's limit" in body["cause"], body
    missing = request_json(image_b64, [box])
    missing["dataframe_split"]["columns"].remove("h")
    missing["dataframe_split"]["data"] = [row[:-1] for row in missing["dataframe_split"]["data"]]
    status, body = _post(url, missing)
    assert status == 400 and "missing column(s) ['h']" in body["cause"] and "\n" not in body["cause"], body
    status, body = _post(url, request_json(image_b64, [box], buffer_ratio=1e300))
    assert status == 400 and body["cause"].startswith("params.buffer_ratio=1e+300: must be a number in (0, 4]"), body
    for huge in ([-1e308, -1e308, 1.7e308, 1.7e308], [0, 0, 1e9, 1e9]):  # before: a stack trace; OOM-killed
        status, body = _post(url, request_json(image_b64, [huge]))
        numbers = {k: v for k, v in body["predictions"][0].items() if k != "guard"}  # guard: a string column
        assert status == 200 and all(np.isfinite(v) for v in numbers.values()), body


def test_no_champion_is_one_line_and_exit_2(store, capsys) -> None:
    assert cli.main(["serve", "--model", "models:/nothing-here@champion"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (MLflow may log the new database first)
    assert last.startswith("snapper serve: ") and "no version of 'nothing-here' has the alias 'champion'" in last


def test_port_in_use_is_one_line_and_exit_2(store, capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert cli.main(["serve", "--model", "models:/snapper/1", "--port", str(port)]) == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
