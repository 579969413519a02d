"""``snapper snap`` error paths as a user meets them: one line, exit status 2, nothing loaded
or written first."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from snapper.cli import main as cli
from tests.batchdata import tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_a_missing_checkpoint_is_one_line(photo, tmp_path, capsys):
    assert cli(["snap", str(photo), "--box", "18,12,55,26", "--checkpoint", str(tmp_path / "nonexistent")]) == 2
    assert "nonexistent" in _one_line(capsys)


@pytest.mark.parametrize("box, what", [("10,10,0.01,0.01", "degenerate"), ("10,10,1.5,30", "degenerate"),
                                       ("10,10,nan,5", "non_finite"), ("10,10,inf,5", "non_finite")])
def test_a_box_too_thin_to_snap_is_refused(photo, tmp_path, capsys, box, what):
    # before: a 1x1 box with confidence 1.0 on every edge
    assert cli(["snap", str(photo), "--box", "18,12,55,26", "--box", box, "--checkpoint", str(tmp_path / "x")]) == 2
    line = _one_line(capsys)
    assert "--box 1" in line and what in line


def test_overlay_paths_are_checked_before_the_model_loads(photo, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for out, what in ((tmp_path / "nodir" / "o.png", "does not exist"), (tmp_path / "afile" / "o.png", "is a file"),
                      (tmp_path, "is a folder"), (tmp_path / "o.pngg", "unknown image extension")):
        assert cli(["snap", str(photo), "--box", "18,12,55,26", "--checkpoint", str(tmp_path / "x"),
                    "--out", str(out)]) == 2
        assert what in _one_line(capsys)


def test_a_truncated_jpeg_is_named_once(ckpt, tmp_path, capsys):
    arr = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    path = tmp_path / "cut.jpg"
    Image.fromarray(arr).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:20000])
    assert cli(["snap", str(path), "--box", "18,12,55,26", "--checkpoint", str(ckpt), "--device", "cpu"]) == 2
    line = _one_line(capsys)
    assert line.count("cut.jpg") == 1 and "truncated" in line and ".cpp" not in line


def test_good_input_still_snaps(ckpt, photo, capsys):
    assert cli(["snap", str(photo), "--box", "18,12,55,26", "--box", "20,10,2,2", "--checkpoint", str(ckpt),
                "--device", "cpu"]) == 0
    assert '"boxes"' in capsys.readouterr().out
