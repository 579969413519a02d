"""Closing the review loop: Label Studio's webhook counts what reviewers submit and, past a
threshold, starts a Prefect deployment that pulls the reviews and adapts the model to them.

``snapper label-studio --review-loop LOOP.json`` turns it on; ``LOOP.json`` names, per Label
Studio project title, what to pull and how to adapt::

    {"projects": {"doubtful boxes": {"out_dir": "runs/batch/crowd-2026-12", "images": "data/images",
                                     "name": "snapper-shelves", "after": 50}},
     "deployment": "review-snapper/default"}

(optional per project: ``base``, ``steps``, ``min_gold``, ``label_studio``). Label Studio
posts ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` to the backend's ``/webhook`` (Settings
-> Webhooks; the ML backend connection adds one). Each submitted (not skipped) annotation id
counts once; when ``after`` are counted since the last start, the deployment gets a flow run
with the project's parameters and the count starts again. The count lives in
``OUT_DIR/review/loop.json`` (written atomically), so a restarted backend goes on where it was.

The flow run is started through Prefect's REST API (``$PREFECT_API_URL``), not its Python client:
the library stays free of Prefect, and the backend needs no Prefect profile. Whether the new
model becomes champion is the adapt flow's decision (only when it beats the current one).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from snapper.atomic import atomic_write_json
from snapper.errors import BadFileError

log = logging.getLogger(__name__)

LOOP_ENV = "SNAPPER_REVIEW_LOOP"
PREFECT_API_ENV = "PREFECT_API_URL"
DEFAULT_DEPLOYMENT = "review-snapper/default"
SUBMIT_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
STATE_FILE = "loop.json"  # under OUT_DIR/review/
PARAMS = ("out_dir", "images", "name", "base", "steps", "min_gold", "label_studio")


class LoopConfigError(BadFileError, ValueError):
    """The review-loop file cannot be used; names the file and the entry."""


@dataclass
class ProjectLoop:
    title: str
    out_dir: str
    images: str
    name: str
    after: int = 50
    extra: dict[str, Any] = field(default_factory=dict)  # base, steps, min_gold, label_studio

    def parameters(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "project": self.title, "images": self.images, "name": self.name, **self.extra}

    @property
    def state_path(self) -> Path:
        return Path(self.out_dir) / "review" / STATE_FILE


@dataclass
class LoopConfig:
    projects: dict[str, ProjectLoop]
    deployment: str = DEFAULT_DEPLOYMENT


def load_loop(path: str | os.PathLike[str]) -> LoopConfig:
    """Read ``LOOP.json`` (module doc), refusing what would fail later, naming the entry."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise LoopConfigError(f"{path}: not a readable JSON file ({e})") from None
    projects = raw.get("projects") if isinstance(raw, dict) else None
    if not isinstance(projects, dict) or not projects:
        raise LoopConfigError(f"{path}: needs \"projects\": {{project title: {{out_dir, images, name, after}}}}")
    out = {}
    for title, p in projects.items():
        missing = [k for k in ("out_dir", "images", "name") if not isinstance((p or {}).get(k), str)]
        if missing:
            raise LoopConfigError(f"{path}: project {title!r} lacks {', '.join(missing)}")
        after = p.get("after", 50)
        if not isinstance(after, int) or after < 1:
            raise LoopConfigError(f"{path}: project {title!r}: after must be a whole number >= 1, got {after!r}")
        unknown = sorted(set(p) - {*PARAMS, "after"})
        if unknown:
            raise LoopConfigError(f"{path}: project {title!r}: unknown keys {unknown} (known: {sorted({*PARAMS, 'after'})})")
        out[title] = ProjectLoop(title, p["out_dir"], p["images"], p["name"], after,
                                 {k: p[k] for k in ("base", "steps", "min_gold", "label_studio") if k in p})
    deployment = raw.get("deployment", DEFAULT_DEPLOYMENT)
    if not isinstance(deployment, str) or deployment.count("/") != 1:
        raise LoopConfigError(f"{path}: deployment must be FLOW/DEPLOYMENT, got {deployment!r}")
    return LoopConfig(out, deployment)


def start_deployment(deployment: str, parameters: dict[str, Any], api_url: str | None = None) -> dict[str, Any]:
    """A flow run of ``deployment`` (``flow/deployment``) through Prefect's REST API; returns it."""
    api = (api_url or os.environ.get(PREFECT_API_ENV) or "").rstrip("/")
    if not api:
        raise RuntimeError(f"{PREFECT_API_ENV} is not set: the review loop starts flow runs on a Prefect server "
                           "(make stack-up prints it)")
    flow_name, name = deployment.split("/")
    r = requests.get(f"{api}/deployments/name/{quote(flow_name)}/{quote(name)}", timeout=30)
    if r.status_code == 404:
        raise RuntimeError(f"Prefect at {api} has no deployment {deployment} (prefect deploy --all registers it)")
    r.raise_for_status()
    run = requests.post(f"{api}/deployments/{r.json()['id']}/create_flow_run", timeout=30,
                        json={"parameters": parameters, "tags": ["snapper", "review-loop"]})
    run.raise_for_status()
    return run.json()


class ReviewLoop:
    """The webhook's counter (module doc); one event at a time."""

    def __init__(self, cfg: LoopConfig, start=start_deployment):
        self.cfg, self.start, self._lock = cfg, start, threading.Lock()

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        """One webhook event -> what was done (``status``: ignored / counted / started / error)."""
        action = event.get("action")
        project = (event.get("project") or {}).get("title") if isinstance(event.get("project"), dict) else None
        loop = self.cfg.projects.get(project) if action in SUBMIT_ACTIONS else None
        if loop is None:
            return {"status": "ignored", "action": action, "project": project}
        anns = event.get("annotations") or [event.get("annotation") or {}]
        ids = {a["id"] for a in anns if isinstance(a, dict) and "id" in a and not a.get("was_cancelled")}
        with self._lock:
            state = self._state(loop)
            counted = sorted(set(state["counted"]) | ids)
            state["counted"] = counted
            out: dict[str, Any] = {"status": "counted", "project": project, "counted": len(counted), "after": loop.after}
            if len(counted) >= loop.after:
                try:
                    run = self.start(self.cfg.deployment, loop.parameters())
                except (RuntimeError, requests.RequestException) as e:
                    log.warning("review loop %r: could not start %s: %s", project, self.cfg.deployment, e)
                    out |= {"status": "error", "error": str(e)}
                else:
                    state["runs"].append({"flow_run": run.get("id"), "name": run.get("name"), "annotations": len(counted)})
                    state["counted"] = []
                    out |= {"status": "started", "flow_run": run.get("id"), "flow_run_name": run.get("name")}
                    log.info("review loop %r: %d annotations submitted: started %s (%s)", project, len(counted),
                             self.cfg.deployment, run.get("name"))
            loop.state_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(loop.state_path, state, indent=1)
        return out

    @staticmethod
    def _state(loop: ProjectLoop) -> dict[str, Any]:
        if loop.state_path.is_file():
            try:
                s = json.loads(loop.state_path.read_text())
                return {"counted": list(s.get("counted", [])), "runs": list(s.get("runs", []))}
            except ValueError:
                log.warning("%s is not JSON: counting from zero", loop.state_path)
        return {"counted": [], "runs": []}
