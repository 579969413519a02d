"""``snapper snap`` error paths as a user meets them: one line, exit status 2, nothing loaded
or written first."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snapper.cli import main as cli
from tests.batchdata import tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_a_missing_checkpoint_is_one_line(photo, tmp_path, capsys):
    assert cli(["snap", str(photo), "--box", "18,12,55,26", "--model", str(tmp_path / "nonexistent")]) == 2
    assert "nonexistent" in _one_line(capsys)


@pytest.mark.parametrize("box, what", [("10,10,0.01,0.01", "degenerate"), ("10,10,1.5,30", "degenerate"),
                                       ("10,10,nan,5", "non_finite"), ("10,10,inf,5", "non_finite")])
def test_a_box_too_thin_to_snap_is_refused(photo, tmp_path, capsys, box, what):
    # before: a 1x1 box with confidence 1.0 on every edge
    assert cli(["snap", str(photo), "--box", "18,12,55,26", "--box", box, "--model", str(tmp_path / "x")]) == 2
    line = _one_line(capsys)
    assert "--box 1" in line and what in line


def test_overlay_paths_are_checked_before_the_model_loads(photo, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for out, what in ((tmp_path / "nodir" / "o.png", "does not exist"), (tmp_path / "afile" / "o.png", "is a file"),
                      (tmp_path, "is a folder"), (tmp_path / "o.pngg", "unknown image extension")):
        assert cli(["snap", str(photo), "--box", "18,12,55,26", "--model", str(tmp_path / "x"),
                    "--out", str(out)]) == 2
        assert what in _one_line(capsys)


def test_a_truncated_jpeg_is_named_once(ckpt, tmp_path, capsys):
    arr = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    path = tmp_path / "cut.jpg"
    Image.fromarray(arr).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:20000])
    assert cli(["snap", str(path), "--box", "18,12,55,26", "--model", str(ckpt), "--device", "cpu"]) == 2
    line = _one_line(capsys)
    assert line.count("cut.jpg") == 1 and "truncated" in line and ".cpp" not in line


def test_good_input_still_snaps(ckpt, photo, capsys):
    assert cli(["snap", str(photo), "--box", "18,12,55,26", "--box", "20,10,2,2", "--model", str(ckpt),
                "--device", "cpu"]) == 0
    assert '"boxes"' in capsys.readouterr().out


def test_snapping_with_a_checkpoint_folder_never_imports_mlflow(photo, ckpt):
    """MLflow costs seconds to import: a folder checkpoint must not pay for it (a fresh
    process, since this test session has imported MLflow elsewhere). ``-v`` says where the
    time went, the imports counted from the start of the process (issue 24)."""
    code = ("import json, sys, time; t0 = time.perf_counter(); from snapper.cli import main; "
            f"rc = main(['snap', {str(photo)!r}, '--box', '18,8,54,34', '--model', {str(ckpt)!r}, '--device', 'cpu', '-v']); "
            "print(json.dumps({'rc': rc, 'mlflow': sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'), "
            "'since_t0': time.perf_counter() - t0}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    since_t0 = result.pop("since_t0")
    assert result == {"rc": 0, "mlflow": []}
    rows = [re.fullmatch(r"  (.+?) +([0-9.]+) s(?: +[0-9.]+%)?", line) for line in out.stderr.splitlines()[1:]]
    seconds = {m.group(1): float(m.group(2)) for m in rows if m}
    assert list(seconds) == ["imports (since the process started)", "options",
                             "model lookup", "model load",
                             "snapping 1 box(es) (image decode included)", "output", "total"], out.stderr
    assert seconds["imports (since the process started)"] > 0.05  # torch alone takes longer than that
    total = seconds.pop("total")
    assert abs(sum(seconds.values()) - total) < 0.01
    assert since_t0 < total  # the interpreter started before this code ran: counted, not missed


def test_a_checkpoint_with_an_absurd_config_is_one_line(ckpt, photo, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["model"]["fpn_channels"] = 200000
    (bad / "config.json").write_text(json.dumps(meta))
    assert cli(["snap", str(photo), "--box", "18,12,55,26", "--model", str(bad), "--device", "cpu"]) == 2
    line = _one_line(capsys)
    assert str(bad / "config.json") in line and "model.fpn_channels" in line


def test_the_old_option_name_still_snaps(ckpt, photo, capsys):
    assert cli(["snap", str(photo), "--box", "18,12,55,26", "--checkpoint", str(ckpt), "--device", "cpu"]) == 0
    assert '"boxes"' in capsys.readouterr().out


def test_a_missing_image_is_one_line(ckpt, tmp_path, capsys):
    assert cli(["snap", str(tmp_path / "nope.jpg"), "--box", "18,12,55,26", "--model", str(ckpt), "--device", "cpu"]) == 2
    assert "nope.jpg" in _one_line(capsys)


@pytest.mark.parametrize("opts, match", [(["--device", "banana"], "--device"), (["--buffer-ratio", "0"], "--buffer-ratio"),
                                         (["--passes", "3"], "--passes"), (["--precision", "fp8"], "--precision")])
def test_bad_read_out_options_exit_2_before_the_model_loads(photo, tmp_path, capsys, opts, match):
    """The read-out options are SnapSettings' fields, checked before anything is loaded."""
    with pytest.raises(SystemExit) as e:
        cli(["snap", str(photo), "--box", "18,12,55,26", "--model", str(tmp_path / "not-loaded"), *opts])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[-1] and "not-loaded" not in err[-1] and "Traceback" not in "".join(err)


def test_a_huge_box_is_clipped_to_the_image_in_bounded_memory(photo, ckpt):
    """Before: ``--box 0,0,1e9,1e9`` allocated ~21 GiB in the crop kernel (a fresh process, so
    that its peak memory is its own)."""
    import resource

    code = ("import json; from snapper.cli import main; "
            f"raise SystemExit(main(['snap', {str(photo)!r}, '--box', '0,0,1000000000,1000000000', '--model', {str(ckpt)!r}, "
            "'--device', 'cpu']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    (box,) = json.loads(out.stdout)["boxes"]
    x, y, w, h = box["bbox"]
    assert 0 <= x and 0 <= y and x + w <= 90 + 1e-6 and y + h <= 60 + 1e-6
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 2 << 20  # KiB: under 2 GiB
