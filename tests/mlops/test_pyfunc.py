"""The snap service's request handling: image bytes in, server paths only inside an allowed
folder, and every refusal an HTTP 400 naming the row (no server started here; see
tests/cli/test_serve.py for the real one)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from snapper.config import ModelConfig
from snapper.imageio import IMAGE_ROOT_ENV, image_root
from snapper.inference.snap import Snapper
from snapper.integrations.serve import serve_command, serve_env
from snapper.mlops.pyfunc import BOX_COLUMNS, NUMBER_COLUMNS, OUTPUT_COLUMNS, SnapRequestError, encode_image, request_json, snap_rows
from snapper.models.net import build_model


@pytest.fixture(scope="module")
def snapper() -> Snapper:
    torch.manual_seed(0)
    cfg = ModelConfig(trunk="resnet18", input_size=32, fpn_channels=8, decoder_channels=8, decoder_layers=1)
    return Snapper(build_model(cfg), cfg, device="cpu")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    root.mkdir()
    img = np.zeros((60, 80, 3), np.uint8)
    img[10:40, 20:50] = 255
    Image.fromarray(img).save(root / "a.png")
    Image.fromarray(img).save(tmp_path / "outside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    return root


def _rows(**cols) -> pd.DataFrame:
    base = {"x": [18.0], "y": [9.0], "w": [33.0], "h": [30.0]}
    return pd.DataFrame({**base, **cols})


def test_image_bytes_in_boxes_out(snapper: Snapper, images: Path) -> None:
    b64 = encode_image(images / "a.png")
    rows = pd.concat([_rows(image_b64=[b64]), _rows(image_b64=[b64], x=[5.0], buffer_ratio=[1.5])], ignore_index=True)
    out = snap_rows(snapper, rows)
    assert list(out.columns) == list(OUTPUT_COLUMNS) and len(out) == 2
    assert out["guard"].map(type).eq(str).all()  # "" or what the broken-box guard gave back rough
    out = out[list(NUMBER_COLUMNS)]
    assert np.isfinite(out.to_numpy()).all() and ((out[["conf_left", "conf_top"]] >= 0) & (out[["conf_left", "conf_top"]] <= 1)).all().all()
    # The same rows as the server decodes them from request_json().
    body = request_json(b64, [[18, 9, 33, 30]], buffer_ratio=1.0)
    split = body["dataframe_split"]
    again = snap_rows(snapper, pd.DataFrame(split["data"], columns=split["columns"]), body["params"])
    np.testing.assert_allclose(again[list(NUMBER_COLUMNS)].to_numpy(), out.iloc[:1].to_numpy())


@pytest.mark.parametrize("cols, message", [
    ({"image_b64": ["bm90IGFuIGltYWdl"]}, "row 0: image_b64: not a readable image"),
    ({"image_b64": ["%%%"]}, "row 0: image_b64 is not valid base64"),
    ({"image_path": ["a.png"]}, "row 0: image_path is refused: this server reads no files"),
    ({"image": ["/etc/passwd"]}, "row 0: column 'image' (a path on the server) is not read any more"),
    ({}, "row 0: no image"),
])
def test_bad_rows_are_refused_naming_the_row(snapper: Snapper, cols: dict, message: str) -> None:
    with pytest.raises(SnapRequestError) as e:
        snap_rows(snapper, _rows(**cols))
    assert str(e.value).startswith(message) and e.value.row == 0
    assert e.value.get_http_status_code() == 400 and '"cause": "row 0' in e.value.serialize_as_json()


def test_the_row_named_is_the_bad_one(snapper: Snapper, images: Path) -> None:
    b64 = encode_image(images / "a.png")
    rows = pd.concat([_rows(image_b64=[b64]), _rows(image_b64=[b64], x=[500.0])], ignore_index=True)
    with pytest.raises(SnapRequestError, match=r"^row 1: box \[500.0, 9.0, 33.0, 30.0\] is unusable \(outside_image\)"):
        snap_rows(snapper, rows)
    with pytest.raises(SnapRequestError, match=r"row 1: buffer_ratio must be a number in \(0, 4\], got -2.0"):
        snap_rows(snapper, rows.assign(x=[18.0, 18.0], buffer_ratio=[1.0, -2.0]))


def test_server_paths_only_inside_the_allowed_folder(snapper: Snapper, images: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = image_root(images)
    assert len(snap_rows(snapper, _rows(image_path=["a.png"]), root=root)) == 1
    assert len(snap_rows(snapper, _rows(image_path=[str(images / "a.png")]), root=root)) == 1
    for escape in ("../outside.png", str(images.parent / "outside.png"), "link.png"):
        with pytest.raises(SnapRequestError, match="outside the folder this server may read"):
            snap_rows(snapper, _rows(image_path=[escape]), root=root)
    with pytest.raises(SnapRequestError, match="is not a usable path"):
        snap_rows(snapper, _rows(image_path=["a\0.png"]), root=root)
    with pytest.raises(SnapRequestError, match="row 0: give image_b64 or image_path, not both"):
        snap_rows(snapper, _rows(image_path=["a.png"], image_b64=[encode_image(images / "a.png")]), root=root)
    monkeypatch.setenv(IMAGE_ROOT_ENV, str(images))
    assert image_root() == images.resolve()
    monkeypatch.setenv(IMAGE_ROOT_ENV, str(images / "a.png"))
    with pytest.raises(ValueError, match="not a folder"):
        image_root()


def test_server_command_and_environment(tmp_path: Path) -> None:
    cmd = serve_command(port=5099)
    assert cmd[:3] == [os.sys.executable, "-m", "uvicorn"] and cmd[-1] == "snapper.mlops.scoring_app:app"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5099"
    env = serve_env({"PATH": "/usr/bin", IMAGE_ROOT_ENV: "/x", "_MLFLOW_SERVER_ARTIFACT_ROOT": "y"}, "sqlite:///m.db",
                    model_path="/models/3", max_body_bytes=1000, timeout_s=7)
    assert (env["SNAPPER_SERVE_MODEL_PATH"], env["SNAPPER_SERVE_MAX_BODY_BYTES"]) == ("/models/3", "1000")
    assert env["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] == "7"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(os.sys.executable).parent)  # uvicorn is found
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:///m.db" and IMAGE_ROOT_ENV not in env
    assert "_MLFLOW_SERVER_ARTIFACT_ROOT" not in env
    assert serve_env({}, "u", tmp_path)[IMAGE_ROOT_ENV] == str(tmp_path)
    assert base64.b64decode(request_json("aGk=", [[1, 2, 3, 4]])["dataframe_split"]["data"][0][0]) == b"hi"


def test_two_passes_on_request(snapper: Snapper, images: Path) -> None:
    b64 = encode_image(images / "a.png")
    body = request_json(b64, [[18, 9, 33, 30]], passes=2)
    assert body["params"] == {"passes": 2}
    split = body["dataframe_split"]
    rows = pd.DataFrame(split["data"], columns=split["columns"])
    with pytest.raises(SnapRequestError, match=r"^params.passes=2: the served model supports passes=1 only") as e:
        snap_rows(snapper, rows, body["params"])  # a one-pass model: a 400, not a 500
    assert e.value.get_http_status_code() == 400
    with pytest.raises(SnapRequestError, match=r"params.passes=3: passes must be 1 or 2"):
        snap_rows(snapper, rows, {"passes": 3})
    torch.manual_seed(0)
    cfg = ModelConfig(trunk="resnet18", input_size=32, fpn_channels=8, decoder_channels=8, decoder_layers=1,
                      zoom=True)
    zoom = Snapper(build_model(cfg), cfg, device="cpu", guard=False)  # untrained: its raw boxes, not the guard's
    wide = request_json(b64, [[2, 9, 76, 30]], passes=2)  # wide enough for a second look at x
    out = snap_rows(zoom, pd.DataFrame(wide["dataframe_split"]["data"], columns=split["columns"]), wide["params"])
    direct = zoom.snap(Image.open(images / "a.png"), [[2, 9, 76, 30]], passes=2)
    np.testing.assert_allclose(out[list(BOX_COLUMNS)].to_numpy(), direct.boxes)
    assert not np.allclose(direct.boxes, zoom.snap(Image.open(images / "a.png"), [[2, 9, 76, 30]]).boxes)


def test_flip_on_request(snapper: Snapper, images: Path) -> None:
    b64 = encode_image(images / "a.png")
    body = request_json(b64, [[18, 9, 33, 30]], flip=True)
    assert body["params"] == {"flip": True}
    split = body["dataframe_split"]
    rows = pd.DataFrame(split["data"], columns=split["columns"])
    image = Image.open(images / "a.png")
    snapper = snapper.with_settings(guard=False)  # untrained: its raw boxes, not the broken-box guard's
    flipped = Snapper(snapper.model, snapper.cfg, device="cpu", flip=True, guard=False).snap(image, [[18, 9, 33, 30]])
    plain = snapper.snap(image, [[18, 9, 33, 30]])
    assert not np.allclose(flipped.boxes, plain.boxes)  # an untrained model is not mirror-symmetric
    np.testing.assert_allclose(snap_rows(snapper, rows, body["params"])[list(BOX_COLUMNS)].to_numpy(), flipped.boxes)
    np.testing.assert_allclose(snap_rows(snapper, rows, {"flip": "false"})[list(BOX_COLUMNS)].to_numpy(), plain.boxes)
    assert snapper.flip is False  # the served snapper itself is not changed by a request
    with pytest.raises(SnapRequestError, match=r"^params.flip='yes': flip must be true or false") as e:
        snap_rows(snapper, rows, {"flip": "yes"})
    assert e.value.get_http_status_code() == 400
