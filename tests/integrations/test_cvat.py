"""``snapper cvat-tighten`` / :mod:`snapper.integrations.cvat` against the real CVAT SDK whose HTTP layer
(urllib3's pool manager) answers with canned JSON shaped as CVAT's REST API returns it: task,
data meta, labels, annotations with shapes of several types and a track, frames as JPEG/PNG.
The PATCH the SDK would send is recorded and validated with the SDK's own models."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest
import urllib3
from PIL import Image

pytest.importorskip("cvat_sdk")

from cvat_sdk import models  # noqa: E402
from cvat_sdk.api_client import Configuration  # noqa: E402
from cvat_sdk.api_client.model_utils import validate_and_convert_types  # noqa: E402
from cvat_sdk.core.client import AccessTokenCredentials, Client  # noqa: E402

from snapper import cvat  # noqa: E402
from snapper.cli import cvat_tighten  # noqa: E402
from snapper.inference.snap import Snapper, SnapResult  # noqa: E402
from tests.batchdata import tiny_checkpoint  # noqa: E402

HOST = "http://cvat.test:8080"
TASK = 7
TOKEN = "pat-123"


def _image(size: tuple[int, int], fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 40).astype(np.uint8)
    arr[12:40, 15:55] = (200, 120, 40)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _shape(i: int, frame: int, points: list[float], kind: str = "rectangle", label: int = 1, **kw: Any) -> dict:
    s = {"type": kind, "occluded": False, "outside": False, "z_order": 0, "rotation": 0.0, "points": points,
         "id": i, "frame": frame, "label_id": label, "group": 0, "source": "manual", "attributes": [],
         "elements": []}
    s.update(kw)
    return s


# shape id -> expected (status or set of statuses, reason)
EXPECTED = {
    101: ({"snapped", "unchanged"}, None), 102: ({"snapped", "unchanged"}, None),
    103: ("skipped", "not_rectangle"), 104: ("skipped", "not_rectangle"), 105: ("skipped", "rotated"),
    106: ({"snapped", "unchanged"}, None), 107: ("skipped", "frame_deleted"), 108: ("skipped", "image_size_mismatch"),
    109: ("skipped", "degenerate"), 110: ("skipped", "too_small"), 111: ("skipped", "outside_image"),
    112: ("skipped", "not_rectangle"), 301: ("skipped", "track_keyframe"), 302: ("skipped", "track_outside"),
}


def annotations() -> dict:
    return {
        "version": 3,
        "tags": [{"id": 900, "frame": 0, "label_id": 1, "group": 0, "source": "manual", "attributes": []}],
        "shapes": [
            _shape(101, 0, [14.5, 11.0, 55.5, 41.0], occluded=True, z_order=2, group=3,
                   attributes=[{"spec_id": 5, "value": "yes"}]),
            _shape(102, 0, [18.0, 14.0, 50.0, 37.5], label=2, source="auto"),
            _shape(103, 0, [10.0, 10.0, 30.0, 10.0, 20.0, 25.0], kind="polygon"),
            _shape(104, 1, [5.0, 5.0, 9.0, 9.0], kind="points"),
            _shape(105, 1, [10.0, 10.0, 40.0, 30.0], rotation=30.0),
            _shape(106, 1, [13.0, 10.0, 57.0, 43.0]),
            _shape(107, 2, [10.0, 10.0, 40.0, 30.0]),
            _shape(108, 3, [10.0, 10.0, 40.0, 30.0]),
            _shape(109, 1, [10.0, 10.0, 10.0, 30.0]),
            _shape(110, 0, [10.0, 10.0, 11.0, 30.0]),
            _shape(111, 0, [200.0, 10.0, 220.0, 30.0]),
            _shape(112, 0, [30.0, 25.0, 40.0, 30.0], kind="ellipse"),
        ],
        "tracks": [{"id": 300, "frame": 0, "label_id": 1, "group": 0, "source": "manual", "attributes": [],
                    "elements": [], "shapes": [
                        {"type": "rectangle", "occluded": False, "outside": False, "z_order": 0, "rotation": 0.0,
                         "points": [15.0, 12.0, 55.0, 40.0], "id": 301, "frame": 0, "attributes": []},
                        {"type": "rectangle", "occluded": False, "outside": True, "z_order": 0, "rotation": 0.0,
                         "points": [15.0, 12.0, 55.0, 40.0], "id": 302, "frame": 1, "attributes": []}]}],
    }


def _frame_meta(name: str, w: int, h: int) -> dict:
    return {"width": w, "height": h, "name": name, "related_files": 0, "has_related_context": False}


TASK_JSON = {
    "url": f"{HOST}/api/tasks/{TASK}", "id": TASK, "name": "street boxes", "project_id": None,
    "owner": {"url": f"{HOST}/api/users/1", "id": 1, "username": "admin", "first_name": "", "last_name": ""},
    "assignee": None, "bug_tracker": "", "created_date": "2025-01-02T10:00:00.000000Z",
    "updated_date": "2025-01-03T10:00:00.000000Z", "overlap": 0, "segment_size": 4, "status": "annotation",
    "data_chunk_size": 72, "data_compressed_chunk_type": "imageset", "data_original_chunk_type": "imageset",
    "size": 4, "image_quality": 70, "data": 7, "dimension": "2d", "mode": "annotation", "media_type": "image",
    "subset": "", "organization": None, "organization_id": None,
    "jobs": {"count": 1, "completed": 0, "validation": 0, "url": f"{HOST}/api/jobs?task_id={TASK}"},
    "labels": {"url": f"{HOST}/api/labels?task_id={TASK}"}, "assignee_updated_date": None,
    "validation_mode": None,
}

META_JSON = {
    "chunks_updated_date": "2025-01-02T10:00:00.000000Z", "chunk_size": 72, "size": 4, "image_quality": 70,
    "start_frame": 0, "stop_frame": 3, "frame_filter": "", "storage": "local", "cloud_storage_id": None,
    "included_frames": None, "chapters": None, "deleted_frames": [2],
    "frames": [_frame_meta("a.jpg", 80, 60), _frame_meta("b.png", 72, 56), _frame_meta("c.jpg", 80, 60),
               _frame_meta("d.jpg", 100, 60)],  # d.jpg decodes to 80x60: a size mismatch
}

LABELS_JSON = {"count": 2, "next": None, "previous": None, "results": [
    {"id": 1, "name": "car", "color": "#ff0000", "attributes": [], "type": "rectangle", "sublabels": [],
     "has_parent": False, "task_id": TASK, "project_id": None, "parent_id": None},
    {"id": 2, "name": "person", "color": "#00ff00", "attributes": [], "type": "any", "sublabels": [],
     "has_parent": False, "task_id": TASK, "project_id": None, "parent_id": None}]}


class FakeCvat:
    """urllib3's pool manager for a CVAT server that holds task 7."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.annotations = annotations()
        self.after_first_fetch: dict | None = None  # annotations served from the second fetch on
        self.frames = {0: _image((80, 60), "JPEG", 1), 1: _image((72, 56), "PNG", 2), 2: _image((80, 60), "JPEG", 3),
                       3: _image((80, 60), "JPEG", 4)}
        self.password = "s3cret"

    def _json(self, obj: Any, status: int = 200, headers: dict | None = None) -> urllib3.HTTPResponse:
        return urllib3.HTTPResponse(body=json.dumps(obj).encode(), status=status, preload_content=True,
                                    headers={"Content-Type": "application/json", **(headers or {})})

    def request(self, method: str, url: str, fields: Any = None, body: Any = None, headers: Any = None,
                **_: Any) -> urllib3.HTTPResponse:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        query.update({k: str(v) for k, v in (fields or [])})
        req = {"method": method, "path": parts.path.rstrip("/"), "query": query, "headers": dict(headers or {}),
               "body": json.loads(body) if body else None}
        self.requests.append(req)
        if req["path"] == "/api/auth/login":
            ok = req["body"] == {"username": "ann", "password": self.password}
            return (self._json({"key": "3d1c0ffee"}, headers={"Set-Cookie": "sessionid=abc; Path=/, csrftoken=tok; Path=/"})
                    if ok else self._json({"non_field_errors": ["Unable to log in with provided credentials."]}, 400))
        if req["headers"].get("Authorization") != f"Bearer {TOKEN}" and "sessionid" not in req["headers"].get("Cookie", ""):
            return self._json({"detail": "Invalid token."}, 401)
        return self._route(method, req["path"], query, req)

    def _route(self, method: str, path: str, query: dict, req: dict) -> urllib3.HTTPResponse:
        if not path.startswith(f"/api/tasks/{TASK}") and path != "/api/labels":
            return self._json({"detail": "Not found."}, 404)
        if method == "GET" and path == f"/api/tasks/{TASK}":
            return self._json(TASK_JSON)
        if method == "GET" and path == f"/api/tasks/{TASK}/data/meta":
            return self._json(META_JSON)
        if method == "GET" and path == "/api/labels" and query.get("task_id") == str(TASK):
            return self._json(LABELS_JSON)
        if method == "GET" and path == f"/api/tasks/{TASK}/annotations":
            n = sum(r["path"] == path and r["method"] == "GET" for r in self.requests)
            return self._json(self.after_first_fetch if n > 1 and self.after_first_fetch else self.annotations)
        if method == "GET" and path == f"/api/tasks/{TASK}/data" and query.get("type") == "frame":
            assert query.get("quality") == "original"
            kind = "image/png" if int(query["number"]) == 1 else "image/jpeg"
            return urllib3.HTTPResponse(body=self.frames[int(query["number"])], status=200, preload_content=True,
                                        headers={"Content-Type": kind})
        if method == "PATCH" and path == f"/api/tasks/{TASK}/annotations":
            return self._json({"version": 4, "tags": [], "shapes": req["body"]["shapes"], "tracks": []})
        return self._json({"detail": f"unexpected {method} {path}"}, 405)

    def of(self, method: str, path_end: str = "") -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"].endswith(path_end)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def snapper_model(checkpoint: Path) -> Snapper:
    return Snapper.from_checkpoint(checkpoint, device="cpu", guard=False)  # untrained: its raw boxes, not the guard's


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeCvat:
    fake = FakeCvat()
    monkeypatch.setattr(urllib3, "PoolManager", lambda *a, **kw: fake)  # what the SDK's REST client builds
    return fake


def client() -> Client:
    c = Client(HOST, check_server_version=False)
    c.login(AccessTokenCredentials(TOKEN))
    return c


def _rows(report: cvat.TightenReport) -> dict[int, dict]:
    return {r["shape_id"]: r for r in report.rows}


def check_accounting(rows: dict[int, dict]) -> None:
    assert set(rows) == set(EXPECTED)  # every shape and track keyframe, once
    for sid, (status, reason) in EXPECTED.items():
        r = rows[sid]
        assert (r["status"] in status) if isinstance(status, set) else r["status"] == status, (sid, r)
        assert r["reason"] == reason, (sid, r)


def test_dry_run_accounts_for_every_shape_and_sends_nothing(server: FakeCvat, snapper_model: Snapper) -> None:
    report = cvat.tighten_task(client(), TASK, snapper_model)
    rows = _rows(report)
    check_accounting(rows)
    assert not server.of("PATCH") and not report.applied and not any(r["sent"] for r in report.rows)
    # each frame with a rectangle to snap downloaded once (2 is deleted; 3 decodes to another size)
    assert [int(r["query"]["number"]) for r in server.of("GET", "/data")] == [0, 1, 3]
    assert rows[101]["label"] == "car" and rows[102]["label"] == "person" and rows[103]["type"] == "polygon"
    assert rows[301]["track_id"] == 300 and rows[302]["frame"] == 1
    for sid in (101, 102, 106):
        r = rows[sid]
        new = [r[c] for c in cvat.SNAPPED_COLS]
        old = [r[c] for c in cvat.ROUGH_COLS]
        assert new[0] < new[2] and new[1] < new[3]  # pixel xyxy order
        assert [r[c] for c in cvat.CHANGE_COLS] == pytest.approx(np.subtract(new, old), abs=0.006)
        assert all(0.0 <= r[c] <= 1.0 for c in cvat.CONF_COLS)
    assert rows[108]["needs_review"] and rows[108]["review"] == "kept"
    assert not rows[103]["needs_review"] and not rows[301]["needs_review"]
    s = report.summary()
    assert s["n_shapes"] == len(EXPECTED) and s["n_tags_ignored"] == 1 and s["sent"] == 0
    assert sum(s["status"].values()) == len(EXPECTED)
    # The patch that --apply would send: the snapped shapes only
    assert sorted(sh.id for sh in report.patch.shapes) == sorted(i for i, r in rows.items() if r["status"] == "snapped")


def _validated_patch(server: FakeCvat) -> models.PatchedLabeledDataRequest:
    (patch,) = server.of("PATCH")
    assert patch["path"] == f"/api/tasks/{TASK}/annotations" and patch["query"] == {"action": "update"}
    assert patch["headers"]["Content-Type"] == "application/json"
    return validate_and_convert_types(patch["body"], (models.PatchedLabeledDataRequest,), ["body"], True, True,
                                      configuration=Configuration())


def test_apply_patches_only_changed_rectangles(server: FakeCvat, snapper_model: Snapper) -> None:
    report = cvat.tighten_task(client(), TASK, snapper_model, apply=True)
    rows = _rows(report)
    check_accounting(rows)
    snapped = {i for i, r in rows.items() if r["status"] == "snapped"}
    assert snapped, "the untrained model should move at least one edge"
    body = _validated_patch(server)
    assert not body.tags and not body.tracks
    originals = {s["id"]: s for s in annotations()["shapes"]}
    assert {s.id for s in body.shapes} == snapped
    for s in body.shapes:
        o, r = originals[s.id], rows[s.id]
        assert s.type.value == "rectangle" and s.frame == o["frame"] and s.label_id == o["label_id"]
        assert (s.occluded, s.z_order, s.group, s.rotation) == (o["occluded"], o["z_order"], o["group"], 0.0)
        assert [a.to_dict() for a in s.attributes] == o["attributes"]
        assert s.points == [r[c] for c in cvat.SNAPPED_COLS]
        xtl, ytl, xbr, ybr = s.points
        w, h = META_JSON["frames"][s.frame]["width"], META_JSON["frames"][s.frame]["height"]
        assert 0 <= xtl < xbr <= w and 0 <= ytl < ybr <= h
        assert s.source == cvat.SEMI_AUTO
    assert all(r["sent"] == (i in snapped) for i, r in rows.items())
    assert report.applied and report.summary()["sent"] == len(snapped)


class _Still:
    """Answers every box with itself: nothing moves."""

    def snap(self, image: Any, boxes: Any, buffer_ratio: float = 1.0, passes: int = 1) -> SnapResult:
        b = np.asarray(boxes, dtype=np.float64)
        return SnapResult(boxes=b, confidence=np.full((len(b), 4), 0.9), rough=b)


class _Shift(_Still):
    """Moves every box 1 px to the right: every snappable rectangle changes."""

    def snap(self, image: Any, boxes: Any, buffer_ratio: float = 1.0, passes: int = 1) -> SnapResult:
        r = super().snap(image, boxes)
        r.boxes = r.boxes + [1.0, 0.0, 0.0, 0.0]
        return r


def test_unchanged_boxes_are_not_sent(server: FakeCvat) -> None:
    report = cvat.tighten_task(client(), TASK, _Still(), apply=True)  # type: ignore[arg-type]
    rows = _rows(report)
    assert {rows[i]["status"] for i in (101, 102, 106)} == {"unchanged"}
    assert not server.of("PATCH") and not report.patch.shapes and report.applied


def test_a_shape_edited_meanwhile_is_a_conflict(server: FakeCvat) -> None:
    edited = annotations()
    for s in edited["shapes"]:
        if s["id"] == 106:
            s["points"] = [1.0, 1.0, 30.0, 30.0]
    edited["shapes"] = [s for s in edited["shapes"] if s["id"] != 101]  # and one deleted
    server.after_first_fetch = edited
    report = cvat.tighten_task(client(), TASK, _Shift(), apply=True)  # type: ignore[arg-type]
    rows = _rows(report)
    for sid in (101, 106):
        assert rows[sid]["status"] == "conflict" and rows[sid]["needs_review"] and not rows[sid]["sent"]
        assert rows[sid]["review"] == "conflict"
    body = _validated_patch(server)
    assert [s.id for s in body.shapes] == [102] and body.shapes[0].points == [19.0, 14.0, 51.0, 37.5]
    assert rows[102]["sent"] and rows[102]["change_left"] == 1.0


def test_cli_dry_run_then_apply(server: FakeCvat, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MY_CVAT_TOKEN", TOKEN)
    out = tmp_path / "r.json"
    argv = ["--task", str(TASK), "--host", HOST, "--token-env", "MY_CVAT_TOKEN", "--model", str(checkpoint),
            "--device", "cpu", "--no-guard", "--report", str(out)]  # --no-guard: untrained, its raw boxes
    assert cvat_tighten.main(argv) == 0
    assert "dry run, nothing sent" in capsys.readouterr().out and not server.of("PATCH")
    doc = json.loads(out.read_text())
    assert {r["shape_id"] for r in doc["shapes"]} == set(EXPECTED) and doc["summary"]["applied"] is False
    assert TOKEN not in out.read_text()
    csv = tmp_path / "r.csv"
    assert cvat_tighten.main([*argv[:-1], str(csv), "--apply"]) == 0
    assert len(server.of("PATCH")) == 1 and csv.read_text().startswith(",".join(cvat.REPORT_COLUMNS[:3]))
    _validated_patch(server)


def test_cli_password_login(server: FakeCvat, checkpoint: Path, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVAT_PASSWORD", server.password)
    argv = ["--task", str(TASK), "--host", HOST, "--user", "ann", "--model", str(checkpoint), "--device", "cpu",
            "--report", str(tmp_path / "r.csv")]
    assert cvat_tighten.main(argv) == 0
    assert server.of("POST", "/api/auth/login")


@pytest.mark.parametrize("case, expect", [
    ("missing_task", "has no task 99"),
    ("bad_token", "refused access to task 7 (HTTP 401)"),
    ("bad_password", "refused the login of user 'ann'"),
    ("no_password", "set the password in $CVAT_PASSWORD"),
    ("no_token", "no access token: set $CVAT_ACCESS_TOKEN"),
    ("bad_report", "must end in .csv or .json"),
    ("bad_host", "Invalid url schema 'ftp'"),
])
def test_cli_user_errors_are_one_line(case: str, expect: str, server: FakeCvat, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for var in ("CVAT_ACCESS_TOKEN", "CVAT_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", TOKEN)
    base = ["--host", HOST, "--model", str(tmp_path / "never-loaded"), "--report", str(tmp_path / "r.csv")]
    argv = {"missing_task": ["--task", "99"],
            "bad_token": ["--task", "7", "--token-env", "WRONG"],
            "bad_password": ["--task", "7", "--user", "ann", "--password-env", "PW"],
            "no_password": ["--task", "7", "--user", "ann"],
            "no_token": ["--task", "7"],
            "bad_report": ["--task", "7", "--report", str(tmp_path / "r.txt")],
            "bad_host": ["--task", "7", "--host", "ftp://cvat.test"]}[case]
    monkeypatch.setenv("WRONG", "nope")
    monkeypatch.setenv("PW", "wrong")
    if case == "no_token":
        monkeypatch.delenv("CVAT_ACCESS_TOKEN")
    assert cvat_tighten.main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1, err
    assert not server.of("PATCH")


def test_cli_unreachable_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", TOKEN)
    argv = ["--task", "7", "--host", "http://127.0.0.1:9", "--model", str(tmp_path / "never-loaded"),
            "--report", str(tmp_path / "r.csv")]
    assert cvat_tighten.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach CVAT at http://127.0.0.1:9" in err and len(err.splitlines()) == 1, err


def test_patch_request_keeps_the_shape(server: FakeCvat) -> None:
    """The request built for one shape round-trips through the SDK's model unchanged but for points/source."""
    shape = validate_and_convert_types(copy.deepcopy(annotations()["shapes"][0]), (models.LabeledShape,), ["s"], True,
                                       True, configuration=Configuration())
    req = cvat.shape_request(shape, [15.0, 12.0, 54.0, 40.0], source=None)
    d = req.to_dict()
    assert d["points"] == [15.0, 12.0, 54.0, 40.0] and d["source"] == "manual"
    assert {k: v for k, v in d.items() if k != "points"} == {k: v for k, v in annotations()["shapes"][0].items()
                                                              if k != "points"}
