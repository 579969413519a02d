"""The Label Studio ML backend over its HTTP API, with requests shaped as Label Studio sends them.

An untrained tiny checkpoint: plumbing, units, labels, the newest-region choice and the
score/meta fields are checked, not accuracy."""

from __future__ import annotations

import base64
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snapper.cli import labelstudio as cli
from snapper.geometry import EDGE_NAMES
from snapper.inference.snap import Snapper
from snapper.integrations.labelstudio import (
    SnapperBackend,
    create_app,
    load_backend,
    percent_to_xywh,
    rect_controls,
    task_rectangles,
    xywh_to_percent,
)
from snapper.integrations.labelstudio_images import (
    LabelStudioRequestError,
    image_source,
)
from snapper.integrations.labelstudio_loop import LoopConfigError, ReviewLoop, load_loop
from tests.batchdata import tiny_checkpoint

W, H = 160, 120
OBJECT = (40, 30, 80, 60)  # x, y, w, h of the clear rectangle
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image" smart="true">
    <Label value="Car" background="green"/>
    <Label value="Person" background="blue"/>
  </RectangleLabels>
</View>"""


def _photo(path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.random((H, W, 3)) * 40).astype(np.uint8)
    x, y, w, h = OBJECT
    arr[y:y + h, x:x + w] = (220, 140, 60)
    Image.fromarray(arr).save(path, format="PNG")


def _region(rid: str, box_px: tuple[float, float, float, float], label: str, rotation: float = 0.0) -> dict:
    x, y, w, h = box_px
    return {
        "id": rid, "from_name": "label", "to_name": "image", "type": "rectanglelabels", "origin": "manual",
        "original_width": W, "original_height": H, "image_rotation": 0,
        "value": {"x": x / W * 100, "y": y / H * 100, "width": w / W * 100, "height": h / H * 100,
                  "rotation": rotation, "rectanglelabels": [label]},
    }


OLD = _region("old1", (5.0, 5.0, 30.0, 25.0), "Person")
NEW = _region("new2", (34.0, 25.0, 93.0, 70.0), "Car")  # rough box around OBJECT


def _body(context: dict | None, image: str = "/data/local-files/?d=images/photo.png", task: dict | None = None) -> dict:
    task = task or {"id": 7, "data": {"image": image}, "annotations": [], "predictions": []}
    params = {"login": None, "password": None}
    if context is not None:
        params["context"] = context
    return {"tasks": [task], "model_version": "snapper/1", "project": "3.1717000000",
            "label_config": LABEL_CONFIG, "params": params}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> SnapperBackend:
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")
    return SnapperBackend(Snapper.from_checkpoint(ckpt, device="cpu"), "tiny/test")


@pytest.fixture
def client(backend: SnapperBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "root" / "images").mkdir(parents=True)
    _photo(tmp_path / "root" / "images" / "photo.png")
    (tmp_path / "secret.png").write_bytes(_png_bytes())
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(tmp_path / "root"))
    for var in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER", "BASIC_AUTH_PASS",
                "SNAPPER_SERVE_IMAGE_ROOT", "LOCAL_FILES_DOCUMENT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    return create_app(backend).test_client()


def test_units_round_trip() -> None:
    box = [12.5, 7.25, 40.0, 33.0]
    value = xywh_to_percent(box, W, H)
    assert value["rotation"] == 0.0
    assert percent_to_xywh(value, W, H) == pytest.approx(box)
    assert percent_to_xywh({"x": 50, "y": 25, "width": 10, "height": 20}, W, H) == pytest.approx([80, 30, 16, 24])


def test_interactive_snaps_the_newest_rectangle(client, backend) -> None:
    r = client.post("/predict", json=_body({"result": [OLD, NEW]}))
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["model_version"] == "tiny/test"
    [pred] = body["results"]
    [res] = pred["result"]
    assert (res["from_name"], res["to_name"], res["type"]) == ("label", "image", "rectanglelabels")
    assert res["value"]["rectanglelabels"] == ["Car"]  # the newest region's label, not "Person"
    assert res["meta"]["rough_id"] == "new2" and res["id"] not in ("new2", "old1")
    assert (res["original_width"], res["original_height"]) == (W, H)
    conf = res["meta"]["confidence"]
    assert list(conf) == list(EDGE_NAMES) and all(0.0 <= v <= 1.0 for v in conf.values())
    assert res["score"] == pytest.approx(min(conf.values())) and pred["score"] == res["score"]
    assert "snapper edge confidence" in res["meta"]["text"][0]
    # Units: percent out == the library's pixel answer for the newest box, converted back.
    direct = backend.snapper.snap(Image.open(io.BytesIO(_png_bytes())), [percent_to_xywh(NEW["value"], W, H)])
    expected = xywh_to_percent(direct.boxes[0], W, H)
    for k in ("x", "y", "width", "height"):
        assert res["value"][k] == pytest.approx(expected[k], abs=1e-6)
    assert 0 <= res["value"]["x"] and res["value"]["x"] + res["value"]["width"] <= 100 + 1e-9


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    arr = np.zeros((H, W, 3), np.uint8)
    rng = np.random.default_rng(0)
    arr[:] = (rng.random((H, W, 3)) * 40).astype(np.uint8)
    x, y, w, h = OBJECT
    arr[y:y + h, x:x + w] = (220, 140, 60)
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_the_newest_is_the_last_whatever_its_size(client) -> None:
    r = client.post("/predict", json=_body({"result": [NEW, OLD]}))
    [res] = r.get_json()["results"][0]["result"]
    assert res["value"]["rectanglelabels"] == ["Person"] and res["meta"]["rough_id"] == "old1"


def test_preannotation_snaps_the_last_annotation(client) -> None:
    task = {"id": 9, "data": {"image": "data:image/png;base64," + base64.b64encode(_png_bytes()).decode()},
            "annotations": [{"id": 1, "result": [OLD]}, {"id": 2, "result": [OLD, NEW]},
                            {"id": 3, "result": [NEW], "was_cancelled": True}],
            "predictions": [{"id": 5, "model_version": "crowd", "result": [NEW]}]}
    r = client.post("/predict", json=_body(None, task=task))
    assert r.status_code == 200, r.get_json()
    [pred] = r.get_json()["results"]
    assert [x["meta"]["rough_id"] for x in pred["result"]] == ["old1", "new2"]
    assert [x["value"]["rectanglelabels"] for x in pred["result"]] == [["Person"], ["Car"]]
    assert pred["score"] == pytest.approx(min(x["score"] for x in pred["result"]))


def test_a_task_without_rectangles_gets_no_prediction(client) -> None:
    r = client.post("/predict", json=_body(None))
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["results"] == [[]]  # Label Studio: a list per task, empty = none


def test_preannotation_sources() -> None:
    task = {"annotations": [], "predictions": [{"id": 4, "model_version": "crowd", "result": [OLD]},
                                               {"id": 5, "model_version": "tiny/test", "result": [NEW]}]}
    assert task_rectangles(task, "tiny/test") == ("prediction 4", [OLD])
    assert task_rectangles({"data": {}}, "x") == ("", [])


def test_setup_health_and_the_rest(client) -> None:
    r = client.post("/setup", json={"project": "3.1717000000", "schema": LABEL_CONFIG, "hostname": "http://localhost:8080",
                                    "access_token": "x", "model_version": None, "extra_params": None})
    assert r.status_code == 200 and r.get_json() == {"model_version": "tiny/test"}
    bad = client.post("/setup", json={"project": "3.1", "schema": '<View><Image name="i" value="$i"/></View>'})
    assert bad.status_code == 400 and "RectangleLabels" in bad.get_json()["error"]
    for path in ("/health", "/"):
        h = client.get(path)
        assert h.status_code == 200 and h.get_json()["status"] == "UP"
    assert client.get("/versions").get_json() == {"versions": ["tiny/test"]}
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 3}}).status_code == 200


def test_basic_auth(client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASIC_AUTH_USER", "u")
    monkeypatch.setenv("BASIC_AUTH_PASS", "p")
    assert client.get("/health").status_code == 401
    token = base64.b64encode(b"u:p").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {token}"}).status_code == 200


@pytest.mark.parametrize("change, status, words", [
    (lambda b: b["tasks"][0]["data"].pop("image"), 400, "no image reference"),
    (lambda b: b["tasks"][0]["data"].update(image="/data/local-files/?d=images/missing.png"), 404, "not found locally"),
    (lambda b: b["tasks"][0]["data"].update(image="/data/local-files/?d=images/../../secret.png"), 400, "leaves the folder"),
    (lambda b: b["tasks"][0]["data"].update(image="/etc/passwd"), 400, "plain file paths are refused"),
    (lambda b: b["tasks"][0]["data"].update(image="http://example.com/a.jpg"), 400, "is not Label Studio"),
    (lambda b: b["params"]["context"]["result"][-1]["value"].update(rotation=30), 400, "rotated by 30 degrees"),
    (lambda b: b["params"]["context"].update(result=[{"type": "keypointlabels", "value": {"x": 1, "y": 2}}]), 400,
     "no rectangle (only keypointlabels)"),
    (lambda b: b["params"]["context"]["result"][-1].update(from_name="other"), 400, "'other' is not a RectangleLabels"),
    (lambda b: b["params"]["context"]["result"][-1]["value"].update(width=0.0), 400, "unusable (degenerate)"),
    (lambda b: b["params"]["context"]["result"][-1].update(original_width=120, original_height=160), 400,
     "EXIF orientation"),
    (lambda b: b.update(tasks=[]), 400, "non-empty list"),
])
def test_bad_requests_are_refused_naming_the_problem(client, change, status, words) -> None:
    body = _body({"result": [copy.deepcopy(OLD), copy.deepcopy(NEW)]})
    change(body)
    r = client.post("/predict", json=body)
    assert r.status_code == status, r.get_json()
    assert r.get_json()["status"] == "error" and words in r.get_json()["error"]


def test_not_json_is_a_400(client) -> None:
    r = client.post("/predict", data="nope", content_type="text/plain")
    assert r.status_code == 400 and "JSON object" in r.get_json()["error"]


def test_image_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upload = tmp_path / "ls" / "media" / "upload" / "3"
    upload.mkdir(parents=True)
    (upload / "abc-photo.png").write_bytes(_png_bytes())
    monkeypatch.setenv("LABEL_STUDIO_BASE_DATA_DIR", str(tmp_path / "ls"))
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls.example:8080")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "k")
    assert image_source("/data/upload/3/abc-photo.png", 1) == upload / "abc-photo.png"
    assert image_source("upload/3/abc-photo.png", 1) == upload / "abc-photo.png"
    assert image_source("http://ls.example:8080/data/upload/3/abc-photo.png", 1) == upload / "abc-photo.png"
    with pytest.raises(LabelStudioRequestError, match="leaves the folder"):
        image_source("/data/upload/3/../../../../etc/passwd", 1)
    monkeypatch.setenv("SNAPPER_SERVE_IMAGE_ROOT", str(upload))
    assert image_source(str(upload / "abc-photo.png"), 1) == upload / "abc-photo.png"
    assert image_source("abc-photo.png", 1) == upload / "abc-photo.png"
    with pytest.raises(LabelStudioRequestError, match="leaves the folder"):
        image_source(str(tmp_path / "ls"), 1)


def test_label_config_parsing() -> None:
    [c] = rect_controls(LABEL_CONFIG)
    assert (c.from_name, c.to_name, c.type, c.value_key) == ("label", "image", "rectanglelabels", "image")
    with pytest.raises(LabelStudioRequestError, match="not valid XML"):
        rect_controls("<View>")


def test_load_backend_from_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tiny_checkpoint(tmp_path / "runs" / "best")
    monkeypatch.setenv("SNAPPER_MODEL", str(ckpt))
    b = load_backend()
    assert b.model_version == "runs/best" and str(b.snapper.device) == "cpu"
    assert load_backend() is b  # once per process
    assert load_backend(flip=True).snapper.flip and not b.snapper.flip


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args([])
    assert (args.host, args.port, args.model, args.device, args.flip) == ("127.0.0.1", 9090, None, None, False)
    assert cli.build_parser().parse_args(["--flip", "--passes", "2"]).flip
    assert cli.main(["--model", str(tmp_path / "nothing"), "--port", "9"]) == 2
    assert "no such checkpoint path" in capsys.readouterr().err


def test_two_passes_need_a_zoom_model(backend) -> None:
    with pytest.raises(ValueError, match="tiny/test supports passes=1 only"):
        SnapperBackend(backend.snapper, "tiny/test", passes=2)


def test_redirects_are_checked_at_every_hop(monkeypatch: pytest.MonkeyPatch) -> None:
    """An allowed host must not be a way around the allow-list (before: a 302 from an allowed
    host to 127.0.0.1 was fetched)."""
    import http.server
    import threading

    png = _png_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/away"):
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/image.png")
                self.end_headers()
            elif self.path.startswith("/here"):
                self.send_response(302)
                self.send_header("Location", "/image.png")
                self.end_headers()
            else:
                self.send_response(200)
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_port
        monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
        monkeypatch.setenv("SNAPPER_LS_URL_HOSTS", "localhost")
        assert image_source(f"http://localhost:{port}/here", 1) == png  # same host: followed
        with pytest.raises(LabelStudioRequestError, match="redirected to 127.0.0.1.*not an allowed host"):
            image_source(f"http://localhost:{port}/away", 1)
        monkeypatch.setenv("SNAPPER_LS_URL_HOSTS", "localhost,127.0.0.1")
        assert image_source(f"http://localhost:{port}/away", 1) == png  # both listed
    finally:
        server.shutdown()


def test_a_huge_rectangle_is_clipped_and_answered_in_bounded_memory(client) -> None:
    """Before: a rectangle of 1e9 px allocated 13.4 GiB and the answer was an HTML 500."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = client.post("/predict", json=_body({"result": [_region("huge", (0.0, 0.0, 1e9, 1e9), "Car")]}))
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    [res] = r.get_json()["results"][0]["result"]
    assert 0 <= res["value"]["x"] and res["value"]["x"] + res["value"]["width"] <= 100 + 1e-6
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1 << 20  # KiB: under 1 GiB more


def test_a_body_over_the_limit_is_a_413_before_it_is_read(backend, client) -> None:
    """Before: a 200 MB body was read (+0.9 GB of memory) and answered."""
    client = create_app(backend, max_body_bytes=1 << 20).test_client()  # the fixture set the image folder up
    r = client.post("/predict", data=b"{" + b" " * (2 << 20) + b"}", content_type="application/json")
    assert r.status_code == 413 and "over this backend's limit of 1048576 bytes" in r.get_json()["error"]
    assert client.post("/predict", json=_body({"result": [NEW]})).status_code == 200  # under it: answered


def _loop_file(tmp_path: Path, after: int = 2) -> Path:
    path = tmp_path / "loop.json"
    path.write_text(json.dumps({"projects": {"rev": {"out_dir": str(tmp_path / "out"), "images": "imgs",
                                                      "name": "snapper-x", "after": after, "steps": 5}}}))
    return path


def test_webhook_counts_submitted_reviews_and_starts_the_deployment_once_past_the_threshold(backend, tmp_path) -> None:
    started = []
    loop = ReviewLoop(load_loop(_loop_file(tmp_path)), start=lambda d, p: started.append((d, p)) or {"id": "r1", "name": "n"})
    client = create_app(backend, loop=loop).test_client()

    def event(aid: int, action: str = "ANNOTATION_CREATED", project: str = "rev", cancelled: bool = False) -> dict:
        body = {"action": action, "project": {"id": 1, "title": project}, "annotation": {"id": aid, "was_cancelled": cancelled}}
        return client.post("/webhook", json=body).get_json()

    assert event(1, project="other")["status"] == "ignored" and event(1, action="PROJECT_UPDATED")["status"] == "ignored"
    assert event(1) == {"status": "counted", "project": "rev", "counted": 1, "after": 2}
    assert event(1, action="ANNOTATION_UPDATED")["counted"] == 1  # the same annotation again
    assert event(2, cancelled=True)["counted"] == 1  # skipped tasks are not reviews
    assert event(3)["status"] == "started" and started == [("review-snapper/default", {
        "out_dir": str(tmp_path / "out"), "project": "rev", "images": "imgs", "name": "snapper-x", "steps": 5})]
    state = json.loads((tmp_path / "out" / "review" / "loop.json").read_text())
    assert state == {"counted": [], "runs": [{"flow_run": "r1", "name": "n", "annotations": 2}]}
    restarted = ReviewLoop(load_loop(_loop_file(tmp_path)), start=lambda d, p: {"id": "r2"})
    assert restarted.handle({"action": "ANNOTATION_CREATED", "project": {"title": "rev"}, "annotation": {"id": 4}}
                            )["counted"] == 1  # the count survives a restart


def test_webhook_reports_a_deployment_it_cannot_start_and_keeps_counting(backend, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    client = create_app(backend, loop=ReviewLoop(load_loop(_loop_file(tmp_path, after=1)))).test_client()
    r = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"title": "rev"}, "annotation": {"id": 9}})
    assert r.status_code == 200 and r.get_json()["status"] == "error" and "PREFECT_API_URL" in r.get_json()["error"]
    assert json.loads((tmp_path / "out" / "review" / "loop.json").read_text())["counted"] == [9]


@pytest.mark.parametrize("entry,says", [({"images": "i", "name": "n"}, "lacks out_dir"),
                                       ({"out_dir": "o", "images": "i", "name": "n", "after": 0}, "after must be"),
                                       ({"out_dir": "o", "images": "i", "name": "n", "aftr": 3}, "unknown keys")])
def test_loop_file_errors_name_the_entry(tmp_path, entry, says) -> None:
    path = tmp_path / "loop.json"
    path.write_text(json.dumps({"projects": {"rev": entry}}))
    with pytest.raises(LoopConfigError, match=says):
        load_loop(path)
