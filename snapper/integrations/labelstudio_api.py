"""The few Label Studio REST calls ``snapper review`` needs, each failure one line.

Plain ``requests`` on Label Studio's documented API (``/api/projects``, ``/api/projects/{id}/import``,
``/api/projects/{id}/export``, ``/api/import/file-upload/{id}``) instead of ``label-studio-sdk``: the SDK pins an older numpy than
this environment's, and four calls do not need it.

Authentication: a legacy token goes in ``Authorization: Token <key>``; a personal access token
(a JWT, three dot-separated parts) is first exchanged at ``/api/token/refresh`` for a short-lived
access token sent as ``Bearer``. The key comes from ``LABEL_STUDIO_API_KEY`` (never a command-line
argument: those end up in shell history and process lists).

Every way the server can fail the user (not running, wrong key, unknown project, an error page
instead of JSON) is a :class:`LabelStudioError` naming the URL and what to do; nothing here
retries writes, so a failed push never half-imports the same task twice.
"""

from __future__ import annotations

import os
from typing import Any

import requests

from snapper.errors import UserInputError

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
URL_ENV = "LABEL_STUDIO_URL"
DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 120.0  # an export of a large project is one response
UPLOAD_URL_PREFIX = "/data/"  # Label Studio's MEDIA_URL: an upload "upload/3/ab12-photo.jpg" is served there


class LabelStudioError(UserInputError, RuntimeError):
    """Label Studio cannot be used as asked; the message is one line naming the server and why."""


class LabelStudioClient:
    """A session on one Label Studio server with one user's key."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = TIMEOUT_S):
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        if not key:
            raise LabelStudioError(f"no API key: set {API_KEY_ENV} (Label Studio -> Account & Settings -> "
                                   "Access Token)")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = self._authorization(key.strip())

    def _authorization(self, key: str) -> str:
        if key.count(".") != 2:  # a legacy token
            return f"Token {key}"
        r = self._send("POST", "/api/token/refresh", json={"refresh": key}, auth=False)
        access = r.get("access") if isinstance(r, dict) else None
        if not access:
            raise LabelStudioError(f"Label Studio at {self.url} gave no access token for the personal access token "
                                   f"in {API_KEY_ENV}")
        return f"Bearer {access}"

    # ------------------------------------------------------------------------------ transport

    def _send(self, method: str, path: str, auth: bool = True, **kwargs: Any) -> Any:
        url = f"{self.url}{path}"
        send = self.session.request if auth else requests.request
        try:
            r = send(method, url, timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} (connection refused or no route): is it "
                                   f"running? (`make labelstudio` starts one; set {URL_ENV} or --label-studio)") from None
        except requests.Timeout:
            raise LabelStudioError(f"Label Studio at {self.url} did not answer {method} {path} within "
                                   f"{self.timeout:.0f} s") from None
        if r.status_code in (401, 403):
            raise LabelStudioError(f"Label Studio at {self.url} refused the API key in {API_KEY_ENV} "
                                   f"(HTTP {r.status_code} on {path}): copy it from Account & Settings")
        if r.status_code == 404:
            raise LabelStudioError(f"Label Studio at {self.url}: {method} {path} not found (HTTP 404)")
        if r.status_code >= 400:
            raise LabelStudioError(f"Label Studio at {self.url} answered HTTP {r.status_code} to {method} {path}: "
                                   f"{_short(r.text)}")
        if not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            raise LabelStudioError(f"{self.url}{path} answered with {r.headers.get('content-type', 'no type')} instead "
                                   f"of JSON: is {self.url} a Label Studio server?") from None

    # -------------------------------------------------------------------------------- projects

    def projects(self) -> list[dict[str, Any]]:
        """Every project this key can see (Label Studio pages the list; older versions do not)."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            r = self._send("GET", "/api/projects", params={"page": page, "page_size": 100})
            if isinstance(r, list):
                return r
            out += r.get("results", [])
            if not r.get("next"):
                return out
            page += 1

    def find_project(self, title: str) -> dict[str, Any] | None:
        same = [p for p in self.projects() if p.get("title") == title]
        if len(same) > 1:
            raise LabelStudioError(f"Label Studio at {self.url} has {len(same)} projects named {title!r} "
                                   f"(ids {', '.join(str(p['id']) for p in same)}): rename all but one")
        return same[0] if same else None

    def project_named(self, title: str) -> dict[str, Any]:
        p = self.find_project(title)
        if p is None:
            names = sorted(str(q.get("title")) for q in self.projects())
            raise LabelStudioError(f"Label Studio at {self.url} has no project named {title!r} (projects: "
                                   f"{', '.join(map(repr, names)) or 'none'})")
        return p

    def create_project(self, title: str, label_config: str, description: str = "",
                       prelabel_with: str | None = None) -> dict[str, Any]:
        """A new project; ``prelabel_with``: the model version whose predictions pre-fill the
        reviewer's annotation (Settings -> Annotation -> "Use predictions to prelabel tasks")."""
        body: dict[str, Any] = {"title": title, "label_config": label_config, "description": description}
        if prelabel_with:
            body |= {"show_collab_predictions": True, "model_version": prelabel_with}
        return self._send("POST", "/api/projects", json=body)

    def update_label_config(self, project_id: int, label_config: str) -> None:
        self._send("PATCH", f"/api/projects/{project_id}", json={"label_config": label_config})

    def ensure_local_storage(self, project_id: int, path: str) -> None:
        """A local-files storage on ``path`` for the project: Label Studio serves
        ``/data/local-files/?d=...`` only for files under one of the project's storages. Never
        synced: the tasks are imported with their boxes, not made one per file."""
        have = self._send("GET", "/api/storages/localfiles", params={"project": project_id}) or []
        if not any(st.get("path") == path for st in have):
            self._send("POST", "/api/storages/localfiles", json={"project": project_id, "path": path, "use_blob_urls": True,
                                                                 "title": "snapper review images", "regex_filter": ""})

    def upload_file(self, project_id: int, path: str | os.PathLike[str]) -> str:
        """Uploads one file into the project's storage without making a task of it
        (``import?commit_to_project=false``, what the import dialog does before "Import") and
        returns the URL tasks load it from (``/data/upload/<project>/<name>``)."""
        try:
            with open(path, "rb") as f:
                r = self._send("POST", f"/api/projects/{project_id}/import", params={"commit_to_project": "false"},
                               files={"file": (os.path.basename(str(path)), f)})
        except LabelStudioError as e:  # e.g. a file over the server's upload limit: say which one
            raise LabelStudioError(f"uploading {path}: {e}") from None
        ids = r.get("file_upload_ids") if isinstance(r, dict) else None
        if not ids:
            raise LabelStudioError(f"Label Studio at {self.url} took {path} without giving back its upload (an "
                                   "asynchronous import, as in Label Studio Enterprise?): serve the images yourself "
                                   "and give --image-url")
        upload = self._send("GET", f"/api/import/file-upload/{int(ids[0])}")
        name = upload.get("file") if isinstance(upload, dict) else None
        if not isinstance(name, str) or not name:
            raise LabelStudioError(f"Label Studio at {self.url} gave no file name for the upload of {path}")
        return name if name.startswith(("/", "http://", "https://")) else UPLOAD_URL_PREFIX + name

    # ----------------------------------------------------------------------------------- tasks

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> None:
        """Tasks in Label Studio's JSON format (``data`` and ``predictions``), in one request."""
        if tasks:
            self._send("POST", f"/api/projects/{project_id}/import", json=tasks)

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations, including tasks nobody annotated."""
        r = self._send("GET", f"/api/projects/{project_id}/export",
                       params={"exportType": "JSON", "download_all_tasks": "true"})
        if not isinstance(r, list):
            raise LabelStudioError(f"Label Studio at {self.url}: the export of project {project_id} is not a list of "
                                   "tasks")
        return r


def _short(text: str, n: int = 200) -> str:
    one = " ".join(text.split())
    return one if len(one) <= n else one[:n] + "..."
