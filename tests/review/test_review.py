"""``snapper review push/pull`` without a Label Studio: an in-memory project stands in for the
server (what it stores and exports is what Label Studio 1.23 does, checked by the slow test in
``test_review_labelstudio.py``); the client's error lines against real sockets."""

from __future__ import annotations

import copy
import http.server
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from snapper.cli.review import main as review_main
from snapper.errors import BadOptionError
from snapper.integrations.labelstudio_api import LabelStudioClient, LabelStudioError
from snapper.review.pull import pull
from snapper.review.push import image_url_for, push
from snapper.review.tasks import (
    GOLD_JSON,
    PULL_JSON,
    REVIEW_DIR,
    REVIEWED_JSON,
    ROUGH_JSON,
    config_labels,
    load_batch_output,
)


class FakeLabelStudio:
    """The calls of :class:`LabelStudioClient` on an in-memory server (one user)."""

    url = "http://fake"

    def __init__(self) -> None:
        self.projects_: list[dict[str, Any]] = []
        self.tasks: dict[int, list[dict[str, Any]]] = {}
        self.imports = 0
        self.uploads: list[str] = []

    def projects(self) -> list[dict[str, Any]]:
        return self.projects_

    find_project = LabelStudioClient.find_project
    project_named = LabelStudioClient.project_named

    def create_project(self, title: str, label_config: str, description: str = "",
                       prelabel_with: str | None = None) -> dict[str, Any]:
        p = {"id": len(self.projects_) + 1, "title": title, "label_config": label_config}
        self.projects_.append(p)
        self.tasks[p["id"]] = []
        return p

    def update_label_config(self, pid: int, config: str) -> None:
        next(p for p in self.projects_ if p["id"] == pid)["label_config"] = config

    def import_tasks(self, pid: int, tasks: list[dict[str, Any]]) -> None:
        self.imports += 1
        for t in tasks:
            tid = sum(map(len, self.tasks.values())) + 1
            self.tasks[pid].append({"id": tid, "data": t["data"], "annotations": [],
                                    "predictions": copy.deepcopy(t["predictions"])})

    def export(self, pid: int) -> list[dict[str, Any]]:
        return copy.deepcopy(self.tasks[pid])

    def upload_file(self, pid: int, path: Path) -> str:
        self.uploads.append(Path(path).name)
        return f"/data/upload/{pid}/{len(self.uploads):04x}-{Path(path).name}"

    def submit(self, pid: int, key: str, result: list[dict[str, Any]], cancelled: bool = False) -> dict[str, Any]:
        """What the reviewer's Submit (or Skip) leaves in the task."""
        task = next(t for t in self.tasks[pid] if t["data"]["snapper_key"].startswith(key + ":"))
        task["annotations"].append({"id": len(task["annotations"]) + 1, "result": result, "was_cancelled": cancelled,
                                    "updated_at": f"2026-01-01T00:00:0{len(task['annotations'])}Z"})
        return task


def _region(task: dict[str, Any], rid: str, **changes: float) -> dict[str, Any]:
    r = copy.deepcopy(next(r for r in task["predictions"][0]["result"] if r["id"] == rid))
    r["value"].update(changes)
    return r


def test_push_imports_one_task_per_image_once_and_names_the_doubtful_edges(batch_out) -> None:
    out, images = batch_out
    ls = FakeLabelStudio()
    res = push(load_batch_output(out), images, ls, "rev", image_url="http://img/")
    assert [k.rsplit(":", 1)[0] for k in sorted(res.imported)] == ["1:a.jpg", "2:b.jpg"] and res.project_created
    assert res.not_pushable == {5: "image file gone.jpg not in " + str(images)}
    t1, t2 = ls.tasks[1]
    assert t1["data"]["snapper_boxes"] == [1, 2, 3] and t2["data"]["snapper_boxes"] == [4]
    assert t1["data"]["image"] == "http://img/a.jpg"
    assert "#1 dog: check left (0.30), top (0.30)" in t1["data"]["snapper_note"]
    assert "check right (0.20), bottom (0.20)" in t2["data"]["snapper_note"]  # review_edges.csv adds 'right'
    region = t1["predictions"][0]["result"][0]
    assert region["id"] == "snapper-1" and region["score"] == 0.3 and region["value"]["rectanglelabels"] == ["dog"]  # category 2
    assert region["value"]["x"] == pytest.approx(5.0) and region["value"]["width"] == pytest.approx(25.0)
    assert config_labels(ls.projects_[0]["label_config"]) == ["cat", "dog"]
    again = push(load_batch_output(out), images, ls, "rev", image_url="http://img/")
    assert not again.imported and sorted(again.already) == sorted(res.imported) and len(ls.tasks[1]) == 2
    data = json.loads((out / "snapped.json").read_text())
    data["annotations"][0]["bbox"] = [11, 10, 50, 40]  # snapped again (another model): new boxes on a.jpg
    (out / "snapped.json").write_text(json.dumps(data))
    third = push(load_batch_output(out), images, ls, "rev", image_url="http://img/")
    assert [k.rsplit(":", 1)[0] for k in third.imported] == ["1:a.jpg"] and len(ls.tasks[1]) == 3
    s = pull(load_batch_output(out), ls, "rev")
    assert s["counts"]["pending"] == 4 and s["problems"] == [
        "3 boxes of the project's tasks were not pushed from this folder as it is now (another batch in the same "
        "project, or re-snapped since the push): left out"]


def test_push_uploads_each_image_once(batch_out) -> None:
    """For a Label Studio on another machine: the images go up with the tasks, once each."""
    out, images = batch_out
    ls = FakeLabelStudio()
    push(load_batch_output(out), images, ls, "up", upload=True)
    assert ls.uploads == ["a.jpg", "b.jpg"]
    assert [t["data"]["image"] for t in ls.tasks[1]] == ["/data/upload/1/0001-a.jpg", "/data/upload/1/0002-b.jpg"]
    assert push(load_batch_output(out), images, ls, "up", upload=True).already and ls.uploads == ["a.jpg", "b.jpg"]
    data = json.loads((out / "snapped.json").read_text())
    data["annotations"][0]["bbox"] = [11, 10, 50, 40]  # re-snapped: a new task for a.jpg, its image already there
    (out / "snapped.json").write_text(json.dumps(data))
    push(load_batch_output(out), images, ls, "up", upload=True)
    assert ls.uploads == ["a.jpg", "b.jpg"] and ls.tasks[1][-1]["data"]["image"] == "/data/upload/1/0001-a.jpg"
    with pytest.raises(BadOptionError, match="not both"):
        push(load_batch_output(out), images, ls, "up", image_url="http://img/", upload=True)


def test_push_refuses_a_project_it_did_not_make(batch_out) -> None:
    out, images = batch_out
    ls = FakeLabelStudio()
    ls.create_project("rev", '<View><Image name="img" value="$image"/></View>')
    with pytest.raises(LabelStudioError, match="not made by `snapper review push`"):
        push(load_batch_output(out), images, ls, "rev", image_url="http://img/")


def test_pull_accounts_for_every_annotation_and_is_repeatable(batch_out) -> None:
    out, images = batch_out
    ls = FakeLabelStudio()
    push(load_batch_output(out), images, ls, "rev", image_url="http://img/")
    t1 = ls.export(1)[0]
    moved = _region(t1, "snapper-1", x=7.5)  # left edge 10 -> 15 px
    redrawn = {**_region(t1, "snapper-3"), "id": "lsRandom1"}  # deleted and drawn again
    new = {**_region(t1, "snapper-2", x=80.0, y=80.0, width=5.0, height=10.0), "id": "lsRandom2"}
    rotated = _region(ls.export(1)[1], "snapper-4", rotation=12.0)
    ls.submit(1, "1:a.jpg", [moved, redrawn, new])  # snapper-2 deleted
    ls.submit(1, "2:b.jpg", [rotated])
    s = pull(load_batch_output(out), ls, "rev")
    assert s["counts"] == {"not_flagged": 1, "confirmed": 1, "corrected": 1, "added": 1, "removed": 1, "skipped": 0,
                           "pending": 0, "invalid_edit": 1, "not_pushable": 1}
    assert any("rotated by 12 degrees" in p for p in s["problems"])
    review = out / REVIEW_DIR
    reviewed = {a["id"]: a for a in json.loads((review / REVIEWED_JSON).read_text())["annotations"]}
    assert sorted(reviewed) == [1, 3, 4, 5, 6, 7]  # 2 removed; 7 added
    assert reviewed[1]["bbox"] == [15.0, 10.0, 50.0, 40.0] and reviewed[1]["snapper_review"]["status"] == "corrected"
    assert reviewed[4]["bbox"] == [40, 20, 80, 60] and reviewed[7]["bbox"] == [160.0, 80.0, 10.0, 10.0]
    gold = json.loads((review / GOLD_JSON).read_text())
    rough = json.loads((review / ROUGH_JSON).read_text())
    assert sorted(a["id"] for a in gold["annotations"]) == [1, 3, 7] and [i["id"] for i in gold["images"]] == [1]
    assert {a["id"]: a["bbox"] for a in rough["annotations"]} == {1: [8, 12, 55, 40], 3: [20, 60, 33, 30]}
    table = pd.read_parquet(review / "review.parquet")
    assert list(table["annotation_id"]) == [1, 2, 3, 4, 5, 6, 7] and table["status"].notna().all()
    before = {p.name: p.read_bytes() for p in review.iterdir()}
    pull(load_batch_output(out), ls, "rev")
    assert {p.name: p.read_bytes() for p in review.iterdir()} == before


def test_pull_says_when_a_reviewed_annotation_vanished(batch_out) -> None:
    out, images = batch_out
    ls = FakeLabelStudio()
    push(load_batch_output(out), images, ls, "rev", image_url="http://img/")
    ls.submit(1, "2:b.jpg", [_region(ls.export(1)[1], "snapper-4")])
    assert pull(load_batch_output(out), ls, "rev")["counts"]["confirmed"] == 1
    ls.tasks[1][1]["annotations"] = []  # deleted in Label Studio
    s = pull(load_batch_output(out), ls, "rev")
    assert s["counts"]["pending"] == 4 and s["counts"]["confirmed"] == 0  # task 1 never reviewed
    assert s["problems"] == [("task 2: the annotation the last pull read is gone from Label Studio (deleted?); boxes "
                              "#4 are pending again, their snapped boxes kept")]
    ls.submit(1, "1:a.jpg", [], cancelled=True)
    assert pull(load_batch_output(out), ls, "rev")["counts"]["skipped"] == 3
    assert json.loads((out / REVIEW_DIR / PULL_JSON).read_text())["annotations"] == 6


class _Answer(http.server.BaseHTTPRequestHandler):
    status, body = 401, b'{"detail": "Invalid token."}'

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json" if self.body.startswith(b"{") else "text/html")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("status,body,says", [(401, b'{"detail": "Invalid token."}', "refused the API key"),
                                              (200, b"<html>hello</html>", "a Label Studio server?")])
def test_client_errors_are_one_line(status: int, body: bytes, says: str) -> None:
    handler = type("H", (_Answer,), {"status": status, "body": body})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(LabelStudioError, match=says):
            LabelStudioClient(f"http://127.0.0.1:{server.server_port}", "key").projects()
    finally:
        server.shutdown()


def test_cli_says_in_one_line_what_is_wrong(batch_out, capsys, monkeypatch) -> None:
    out, images = batch_out
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nobody listens
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "k")
    assert review_main(["pull", str(out), "--project", "p", "--label-studio", f"http://127.0.0.1:{port}"]) == 2
    assert "cannot reach Label Studio" in capsys.readouterr().err
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    assert review_main(["pull", str(out), "--project", "p"]) == 2
    assert "set LABEL_STUDIO_API_KEY" in capsys.readouterr().err
    assert review_main(["push", str(images), "--images", str(images), "--project", "p"]) == 2
    err = capsys.readouterr().err
    assert "holds no snapped.json" in err and len(err.strip().splitlines()) == 1


def test_review_flow_pulls_and_reports_and_adapts_only_past_min_gold(batch_out, prefect_server, monkeypatch) -> None:
    from prefect.artifacts import Artifact

    import flows.review as F
    from flows.common import artifact_key

    out, images = batch_out
    ls = FakeLabelStudio()
    push(load_batch_output(out), images, ls, "rev", image_url="http://img/")
    ls.submit(1, "2:b.jpg", [_region(ls.export(1)[1], "snapper-4", x=25.0)])
    monkeypatch.setattr(F, "LabelStudioClient", lambda url: ls)
    adapted = []
    monkeypatch.setattr(F, "adapt_snapper", lambda **kw: adapted.append(kw) or {"ok": 1})
    res = F.review_snapper(str(out), "rev", str(images), "snapper-x", min_gold=2)
    assert res["adapt"] is None and not adapted and res["pull"]["counts"]["corrected"] == 1
    md = Artifact.get(artifact_key("snapper-review", "rev"))
    assert md is not None and "not adapting: under 2 gold boxes" in md.data and "corrected 1" in md.data
    res = F.review_snapper(str(out), "rev", str(images), "snapper-x", min_gold=1, steps=3)
    review = out / REVIEW_DIR
    assert res["adapt"] == {"ok": 1} and adapted == [{
        "gold": str(review / GOLD_JSON), "images": str(images), "name": "snapper-x", "rough": str(review / ROUGH_JSON),
        "base": "models:/snapper@champion", "steps": 3}]


def test_images_reach_label_studio_through_its_local_files_storage(batch_out, monkeypatch) -> None:
    out, images = batch_out
    monkeypatch.delenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    with pytest.raises(BadOptionError, match="give --image-url"):
        image_url_for("a b.jpg", images, None)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(images.parent))
    assert image_url_for("a b.jpg", images, None) == "/data/local-files/?d=images/a%20b.jpg"
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(out))
    with pytest.raises(BadOptionError, match="is not inside"):
        image_url_for("a.jpg", images, None)
