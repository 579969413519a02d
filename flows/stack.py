"""The local stack: Prefect server + ``process`` work pool + worker + MLflow server, on loopback.

    python -m flows.stack up       # start (idempotent), deploy prefect.yaml, print the URLs
    python -m flows.stack status   # what runs, where
    python -m flows.stack down     # stop exactly what `up` started

Everything lives under the project home (``--home``, else ``$SNAPPER_HOME``, else the
checkout): ``.prefect/`` (PREFECT_HOME: the server's SQLite database), ``mlflow/`` (the same
``mlflow.db`` + ``artifacts/`` that :mod:`snapper.mlops.tracking` uses without a server, so local
runs and stack runs share one store) and ``.stack/`` (PID files, logs, ``stack.json``).

Why PID files + process groups: every service is started in its own session, so ``down``
can stop the service together with whatever it spawned (uvicorn workers, flow-run
subprocesses) by signalling that group, and nothing else. A PID file is trusted only while
the process it names still runs the command we started (PIDs get reused).

Ports: ``--prefect-port``/``--mlflow-port`` or ``SNAPPER_PREFECT_PORT``/``SNAPPER_MLFLOW_PORT``
(defaults 4200/5000). Nothing listens beyond 127.0.0.1. Offline: analytics and telemetry are
switched off in every child's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows import OFFLINE_ENV
from flows.procs import alive, group_alive, memory_kb, pid_exists, proc_table, service_processes
from snapper.errors import SnapperError
from snapper.home import HOME_ENV
from snapper.home import home as project_home

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
POOL = "snapper-pool"
SERVICES = ("prefect-server", "mlflow-server", "prefect-worker")  # start order; stopped in reverse

# MLflow 3's server also starts job-execution consumers (huey) for GenAI features (judges,
# scorers, trace jobs) the project does not use: about 8 processes and 2 GB on their own.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class StackError(SnapperError, RuntimeError):
    pass


@dataclass
class Stack:
    home: Path
    prefect_port: int
    mlflow_port: int

    @property
    def state_dir(self) -> Path:
        return self.home / ".stack"

    @property
    def prefect_home(self) -> Path:
        return self.home / ".prefect"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def prefect_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}"

    @property
    def api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for every child: offline, project-local state, the stack's endpoints."""
        env = dict(os.environ)
        # MLflow's private artifact-root hook may be left over from an in-process MLflow user
        # (snapper.mlops.tracking sets it); the server derives its own from its flags.
        env.pop("_MLFLOW_SERVER_ARTIFACT_ROOT", None)
        env.update(OFFLINE_ENV)
        env.update(
            {
                "PREFECT_HOME": str(self.prefect_home),
                "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_API_HOST": HOST,
                "PREFECT_SERVER_API_PORT": str(self.prefect_port),
                "MLFLOW_TRACKING_URI": self.mlflow_url,
                HOME_ENV: str(self.home),
                "SNAPPER_PROJECT_DIR": str(REPO),  # prefect.yaml's pull step: where flow code lives
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            }
        )
        env.update(extra)
        return env


def _port(arg: int | None, env_name: str, default: int) -> int:
    if arg is not None:
        return arg
    value = os.environ.get(env_name)
    return int(value) if value else default


def stack_from_args(home: str | None, prefect_port: int | None = None, mlflow_port: int | None = None) -> Stack:
    h = Path(home).expanduser().resolve() if home else project_home(default=REPO)
    # A running stack's recorded ports win over defaults, so `down`/`status` need no flags.
    recorded = _read_json(h / ".stack" / "stack.json") or {}
    return Stack(
        home=h,
        prefect_port=_port(prefect_port, "SNAPPER_PREFECT_PORT", int(recorded.get("prefect_port", 4200))),
        mlflow_port=_port(mlflow_port, "SNAPPER_MLFLOW_PORT", int(recorded.get("mlflow_port", 5000))),
    )


# ---------------------------------------------------------------------------- small helpers


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _bin(name: str) -> str:
    """The console script installed beside this interpreter (the project's venv)."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name!r} not found beside {sys.executable} or on PATH; run `make venv`")
    return found


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback URL we built
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def worker_online(api_url: str, pool: str = POOL) -> bool:
    """A worker of ``pool`` has sent a heartbeat to the server (status ONLINE)."""
    req = urllib.request.Request(
        f"{api_url}/work_pools/{pool}/workers/filter", data=b"{}", method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback URL we built
            workers = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(str(w.get("status", "")).upper() == "ONLINE" for w in workers)


# ---------------------------------------------------------------------------- services


def _pidfile(stack: Stack, name: str) -> Path:
    return stack.state_dir / f"{name}.pid"


def _running(stack: Stack, name: str) -> dict[str, Any] | None:
    rec = _read_json(_pidfile(stack, name))
    if rec is not None and alive(rec):
        return rec
    return None


def _start(stack: Stack, name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    log_path = stack.state_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: `down` signals exactly this tree
        )
    rec = {
        "pid": proc.pid,
        "pgid": os.getpgid(proc.pid),
        "cmd": cmd,
        # What /proc/<pid>/cmdline must contain for the PID to still be ours.
        "marker": " ".join(cmd[1:3]),
        "log": str(log_path),
        "started": time.time(),
    }
    _write_json(_pidfile(stack, name), rec)
    # Kept in memory only: until the child has exec'd, /proc shows the parent's command line,
    # so start-up waits ask the Popen object whether it exited.
    rec["_proc"] = proc
    return rec


def _exited(rec: dict[str, Any]) -> bool:
    proc = rec.get("_proc")
    return proc.poll() is not None if proc is not None else not alive(rec)


def _wait(check: Any, what: str, timeout: float, rec: dict[str, Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if rec is not None and _exited(rec):
            raise StackError(f"{what} exited during start-up; see {rec['log']}:\n{_tail(Path(rec['log']))}")
        time.sleep(0.5)
    raise StackError(f"{what} not ready after {timeout:.0f}s" + (f"; see {rec['log']}" if rec else ""))


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _run(stack: Stack, cmd: list[str], what: str, timeout: float = 300) -> str:
    """Run a short CLI step (work pool, deploy) against the stack's API; output goes to the log."""
    log_path = stack.state_dir / "setup.log"
    try:
        res = subprocess.run(  # noqa: S603
            cmd, cwd=REPO, env=stack.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise StackError(f"{what} timed out after {timeout:.0f}s") from e
    with open(log_path, "a") as f:
        f.write(f"\n==== {' '.join(cmd)} (exit {res.returncode})\n{res.stdout}\n{res.stderr}\n")
    if res.returncode != 0:
        raise StackError(f"{what} failed (exit {res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res.stdout


def up(stack: Stack, deploy: bool = True, timeout: float = 180) -> dict[str, Any]:
    """Start whatever is not running yet; deploy; return the stack description."""
    for d in (stack.state_dir, stack.prefect_home, stack.mlflow_dir / "artifacts"):
        d.mkdir(parents=True, exist_ok=True)
    try:
        recs = {name: _running(stack, name) for name in SERVICES}
        for name, port in (("prefect-server", stack.prefect_port), ("mlflow-server", stack.mlflow_port)):
            if recs[name] is None and port_in_use(port):
                raise StackError(
                    f"port {port} on {HOST} is in use by another program; pick another "
                    f"(--{name.split('-')[0]}-port or SNAPPER_{name.split('-')[0].upper()}_PORT)"
                )

        # 1. Prefect server (SQLite under PREFECT_HOME).
        if recs["prefect-server"] is None:
            recs["prefect-server"] = _start(
                stack, "prefect-server",
                [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(stack.prefect_port)],
                stack.env(), REPO,
            )
        _wait(lambda: http_ok(f"{stack.api_url}/health"), "Prefect server", timeout, recs["prefect-server"])

        # 2. MLflow server on the project's store (the one snapper.mlops.tracking uses without a server).
        # --default-artifact-root makes experiments created through the server use the same plain
        # folder that runs logging straight to SQLite use, so both kinds of runs stay readable.
        if recs["mlflow-server"] is None:
            artifacts = stack.mlflow_dir / "artifacts"
            recs["mlflow-server"] = _start(
                stack, "mlflow-server",
                [
                    _bin("mlflow"), "server", "--host", HOST, "--port", str(stack.mlflow_port), "--workers", "1",
                    "--backend-store-uri", f"sqlite:///{(stack.mlflow_dir / 'mlflow.db').as_posix()}",
                    "--artifacts-destination", str(artifacts),
                    "--default-artifact-root", artifacts.as_uri(),
                ],
                stack.env(**MLFLOW_SERVER_ENV), stack.home,
            )

        # 3. The process work pool (--overwrite: a second `up` on the same database updates it).
        _run(stack, [_bin("prefect"), "work-pool", "create", POOL, "--type", "process", "--overwrite"],
             "creating work pool")

        # 4. Its worker. Flow runs inherit this environment: MLflow server, SNAPPER_HOME.
        if recs["prefect-worker"] is None:
            recs["prefect-worker"] = _start(
                stack, "prefect-worker",
                [_bin("prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", f"snapper-{os.getpid()}"],
                stack.env(), REPO,
            )
        # 5. Deployments from prefect.yaml (the pull step points flow runs at this checkout), while
        # the worker and MLflow start.
        if deploy:
            _run(stack, [_bin("prefect"), "deploy", "--all", "--no-prompt"], "prefect deploy --all")
        _wait(lambda: http_ok(f"{stack.mlflow_url}/health"), "MLflow server", timeout, recs["mlflow-server"])
        _wait(lambda: worker_online(stack.api_url), f"worker of {POOL}", timeout, recs["prefect-worker"])
        for name in SERVICES:
            if recs[name] is None or _exited(recs[name]):  # type: ignore[arg-type]
                raise StackError(f"{name} is not running; see {stack.state_dir / (name + '.log')}")
    except BaseException:
        # Leave nothing half-started behind (a started server holding a port would block a retry).
        down(stack, quiet=True)
        raise
    info = {
        "home": str(stack.home),
        "prefect_port": stack.prefect_port,
        "mlflow_port": stack.mlflow_port,
        "prefect_ui": stack.prefect_url,
        "prefect_api": stack.api_url,
        "mlflow_ui": stack.mlflow_url,
        "work_pool": POOL,
        "pids": {n: r["pid"] for n, r in recs.items() if r},  # type: ignore[index]
    }
    _write_json(stack.state_dir / "stack.json", info)
    return info


def _stop(pgids: list[int], grace: float) -> None:
    """SIGTERM every group at once, then wait for all of them together (one grace period, not
    one per service), SIGKILL what is left."""
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(map(group_alive, pgids)):
        time.sleep(0.1)
    for pgid in filter(group_alive, pgids):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def down(stack: Stack, grace: float = 15.0, quiet: bool = False) -> list[str]:
    """Stop the services recorded in ``.stack/*.pid`` (signalled in reverse start order, waited
    for together); returns their names."""
    recorded = [(n, pf, rec) for n in reversed(SERVICES) if (rec := _read_json(pf := _pidfile(stack, n))) is not None]
    running = []
    for name, _, rec in recorded:
        pid, pgid = int(rec["pid"]), int(rec.get("pgid", rec["pid"]))
        # A leader gone while members of its session linger (e.g. uvicorn workers) is ours too:
        # the kernel never hands out a PID that is still a process-group id.
        if alive(rec) or (not pid_exists(pid) and group_alive(pgid)):
            running.append((name, pgid))
    _stop([g for _, g in running], grace)
    stopped = [n for n, _ in running]
    for name, pf, rec in recorded:
        pf.unlink(missing_ok=True)
        if not quiet:
            print(f"stopped {name} (pid {rec['pid']})" if name in stopped else f"{name}: was not running")
    (stack.state_dir / "stack.json").unlink(missing_ok=True)
    return stopped


def status(stack: Stack) -> dict[str, Any]:
    out: dict[str, Any] = {"home": str(stack.home), "services": {}}
    table = proc_table() if Path("/proc/self/stat").exists() else {}
    for name in SERVICES:
        rec = _running(stack, name)
        procs = service_processes(rec, table) if rec and table else []
        out["services"][name] = {"running": rec is not None, "pid": rec["pid"] if rec else None,
                                 "processes": len(procs), "memory_mb": round(sum(map(memory_kb, procs)) / 1024, 1)}
    out["memory_mb"] = round(sum(s["memory_mb"] for s in out["services"].values()), 1)
    out["prefect_ui"] = stack.prefect_url if http_ok(f"{stack.api_url}/health") else None
    out["mlflow_ui"] = stack.mlflow_url if http_ok(f"{stack.mlflow_url}/health") else None
    return out


def _print_urls(info: dict[str, Any]) -> None:
    print(
        f"""snapper stack is up (home {info['home']})
  Prefect UI   {info['prefect_ui']}
  MLflow UI    {info['mlflow_ui']}  (click 'Model training' top left once: MLflow 3.17 opens experiments in its GenAI view)
  work pool    {info['work_pool']} (process worker running)

Use it from a shell:
  export PREFECT_API_URL={info['prefect_api']} MLFLOW_TRACKING_URI={info['mlflow_ui']}
  .venv/bin/prefect deployment run 'train-snapper/demo' --watch
Stop it with: make stack-down  (or python -m flows.stack down)"""
    )


def _print_status(st: dict[str, Any]) -> None:
    for name, s in st["services"].items():
        state = (f"running (pid {s['pid']}): {s['processes']} process(es), {s['memory_mb']:.0f} MB"
                 if s["running"] else "stopped")
        print(f"{name:<15} {state}")
    print(f"{'whole stack':<15} {st['memory_mb']:.0f} MB (proportional set size, shared pages split)")
    print(f"Prefect UI     {st['prefect_ui'] or '-'}\nMLflow UI      {st['mlflow_ui'] or '-'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.stack", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("up", "down", "status", "env"),
                    help="env: print `export` lines for a running stack's endpoints (nothing when it is down)")
    ap.add_argument("--home", help="project home for state (default: $SNAPPER_HOME or the checkout)")
    ap.add_argument("--prefect-port", type=int)
    ap.add_argument("--mlflow-port", type=int)
    ap.add_argument("--no-deploy", action="store_true", help="skip `prefect deploy --all`")
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for each service")
    ap.add_argument("--json", action="store_true", help="print machine-readable output")
    a = ap.parse_args(argv)
    stack = stack_from_args(a.home, a.prefect_port, a.mlflow_port)
    try:
        if a.command == "up":
            info = up(stack, deploy=not a.no_deploy, timeout=a.timeout)
            print(json.dumps(info, indent=1)) if a.json else _print_urls(info)
        elif a.command == "down":
            down(stack, quiet=a.json)
        elif a.command == "env":
            if http_ok(f"{stack.api_url}/health") and http_ok(f"{stack.mlflow_url}/health"):
                print(f"export PREFECT_API_URL={stack.api_url} MLFLOW_TRACKING_URI={stack.mlflow_url}")
        else:
            st = status(stack)
            if a.json:
                print(json.dumps(st, indent=1))
            else:
                _print_status(st)
    except StackError as e:
        print(f"stack: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
