"""``snapper calibrate`` as a user runs it: a new checkpoint folder with the same weights and the
fitted calibration, its report files, ECE printed; bad splits refused in one line."""

from __future__ import annotations

import json

import pytest

from snapper.cli import main as cli
from snapper.evaluation.calibrate import CALIBRATION_JSON, RELIABILITY_PNG
from snapper.inference.snap import Snapper
from snapper.models.checkpoint import load_checkpoint
from tests.batchdata import tiny_checkpoint
from tests.helpers import make_tiny_shards


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    return root, make_tiny_shards(root), tiny_checkpoint(root / "ck")


def test_calibrate_writes_a_calibrated_checkpoint_and_its_report(setup, tmp_path, capsys):
    _, shards, ckpt = setup
    out = tmp_path / "calibrated"
    args = ["calibrate", "--model", str(ckpt), "--shards", *shards["train"], "--report-shards", *shards["val"],
            "--out", str(out), "--device", "cpu", "--batch-size", "32"]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "ECE selection (in-sample):" in printed and "ECE report:" in printed and str(out) in printed
    assert (out / "model.pt").read_bytes() == (ckpt / "model.pt").read_bytes()
    _, cfg, meta = load_checkpoint(out)
    x, y = cfg.calibration
    assert len(x) == len(y) >= 2 and meta["calibrated_from"] == str(ckpt)
    record = json.loads((out / CALIBRATION_JSON).read_text())
    assert record["knots"] == {"x": x, "y": y} and record["confidence_px"] == cfg.confidence_px
    assert {(r["split"], r["stage"]) for r in record["ece"]} == {(s, t) for s in ("selection", "report")
                                                                 for t in ("before", "after")}
    assert (out / RELIABILITY_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Snapper.from_checkpoint(out, device="cpu").cfg.calibration == [x, y]


def test_bad_splits_and_outputs_are_one_line(setup, tmp_path, capsys):
    _, shards, ckpt = setup
    base = ["calibrate", "--model", str(ckpt), "--device", "cpu"]
    assert cli([*base, "--shards", *shards["train"], "--report-shards", shards["train"][0],
                "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "held out" in err[0]
    assert cli([*base, "--shards", *shards["train"], "--out", str(ckpt)]) == 2
    assert "the model's own folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
