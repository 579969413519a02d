"""End to end: the real local stack on loopback, a deployment run through the worker, the
results in MLflow and Prefect, and a clean shutdown.

Everything happens in a temporary project home on free ports, so it never touches a stack a
developer has running. The stack is stopped in the fixture's teardown whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flows.stack import REPO, free_port

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 420  # seconds for the tiny deployment run (about one minute on 2 idle cores)
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _http(method: str, url: str, body: Any = None, timeout: float = 30) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback
        return json.loads(r.read() or b"null")


def _stack_cmd(home: Path, *args: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.stack", *args, "--home", str(home)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("stack-home")
    env = dict(os.environ)
    for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "SNAPPER_HOME", "_MLFLOW_SERVER_ARTIFACT_ROOT"):
        env.pop(k, None)
    env.update({
        "SNAPPER_PREFECT_PORT": str(free_port()),
        "SNAPPER_MLFLOW_PORT": str(free_port()),
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # pick the run up quickly
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    })
    pids: list[int] = []
    try:
        up = _stack_cmd(home, "up", "--json", env=env)
        assert up.returncode == 0, f"stack up failed:\n{up.stdout}\n{up.stderr}"
        info = json.loads(up.stdout)
        pids = list(info["pids"].values())
        assert info["prefect_ui"].startswith("http://127.0.0.1:") and info["mlflow_ui"].startswith("http://127.0.0.1:")
        yield {**info, "home": home, "env": {**env, "PREFECT_API_URL": info["prefect_api"]}}
    finally:
        down = _stack_cmd(home, "down", env=env, timeout=120)
        assert down.returncode == 0, down.stderr
        # Exactly what `up` started is gone (process groups included).
        deadline = time.monotonic() + 30
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [p for p in pids if _exists(p)]
            time.sleep(0.5)
        assert not alive, f"processes still running after `down`: {alive}"


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_deployment_run_through_the_stack(stack: dict) -> None:
    api, mlflow_url = stack["prefect_api"], stack["mlflow_ui"]
    prefect = str(Path(sys.executable).parent / "prefect")
    # The documented command, with parameters overridden on the command line.
    res = subprocess.run(
        [prefect, "deployment", "run", "train-snapper/ci", "--param", "name=e2e"],
        cwd=REPO, env=stack["env"], capture_output=True, text=True, timeout=120, check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", res.stdout)
    assert m, res.stdout
    run_id = m.group(1)

    deadline = time.monotonic() + RUN_TIMEOUT
    state = None
    while time.monotonic() < deadline:
        fr = _http("GET", f"{api}/flow_runs/{run_id}")
        state = (fr.get("state") or {}).get("type")
        if state in TERMINAL:
            break
        time.sleep(1)
    if state != "COMPLETED":
        logs = _http("POST", f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        tail = "\n".join(l["message"] for l in logs[-40:])
        worker_log = (stack["home"] / ".stack" / "prefect-worker.log").read_text()[-4000:]
        pytest.fail(f"flow run ended {state!r} (timeout {RUN_TIMEOUT}s)\n{tail}\n--- worker log ---\n{worker_log}")
    assert fr["parameters"]["name"] == "e2e"

    # Prefect artifact: Table 1 with the MLflow link.
    arts = _http("POST", f"{api}/artifacts/filter",
                 {"artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": ["snapper-table1-e2e"]}}})
    assert len(arts) == 1 and arts[0]["type"] == "markdown" and arts[0]["description"]
    assert "| identity |" in arts[0]["data"] and "| snapper |" in arts[0]["data"]

    # MLflow (through the stack's server): the run, its metrics, the per-box Parquet, the model.
    exps = _http("POST", f"{mlflow_url}/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
    exp_ids = [e["experiment_id"] for e in exps if e["name"] == "snapper-ci"]  # smoke runs: their own experiment
    assert exp_ids, exps
    exp_tags = {t["key"]: t["value"] for e in exps if e["name"] == "snapper-ci" for t in e.get("tags", [])}
    assert exp_tags["mlflow.experimentKind"] == "custom_model_development"  # opens on runs, not GenAI
    runs = _http("POST", f"{mlflow_url}/api/2.0/mlflow/runs/search",
                 {"experiment_ids": exp_ids, "filter": "tags.`mlflow.runName` = 'e2e'"})["runs"]
    assert len(runs) == 1
    mrun = runs[0]
    assert mrun["info"]["status"] == "FINISHED"
    assert mrun["info"]["run_id"] in arts[0]["data"]
    metrics = {m["key"] for m in mrun["data"].get("metrics", [])}
    assert {"train/loss", "table1/1_miou"} <= metrics and any(k.startswith("val/eval/snapper/") for k in metrics), sorted(metrics)
    listing = _http("GET", f"{mlflow_url}/api/2.0/mlflow/artifacts/list?run_id={mrun['info']['run_id']}&path=eval")
    assert "eval/boxes.parquet" in {f["path"] for f in listing.get("files", [])}
    assert "prefect.flow_run_url" in {t["key"] for t in mrun["data"]["tags"]}  # a link back to Prefect
    # The smoke run registers under snapper-ci; the production model and its champion are untouched.
    versions = _http("GET", f"{mlflow_url}/api/2.0/mlflow/model-versions/search?filter=name%3D%27snapper-ci%27")
    assert mrun["info"]["run_id"] in {v["run_id"] for v in versions.get("model_versions", [])}
    prod = _http("GET", f"{mlflow_url}/api/2.0/mlflow/model-versions/search?filter=name%3D%27snapper%27")
    assert not prod.get("model_versions")

    # The run wrote its outputs under the stack's project home, not into the checkout.
    assert (stack["home"] / "runs" / "e2e" / "eval" / "boxes.parquet").is_file()
    assert (stack["home"] / "mlflow" / "mlflow.db").is_file()


def test_status_reports_running_services(stack: dict) -> None:
    st = _stack_cmd(stack["home"], "status", "--json", env=stack["env"], timeout=60)
    assert st.returncode == 0
    status = json.loads(st.stdout)
    services = status["services"]
    assert all(s["running"] for s in services.values()), services
    # Only the MLflow processes the project uses (no job-execution consumers), and a memory figure.
    assert services["mlflow-server"]["processes"] <= 3, services
    assert 0 < status["memory_mb"] == pytest.approx(sum(s["memory_mb"] for s in services.values()), abs=1)
