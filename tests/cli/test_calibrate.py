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
            "--out", str(out), "--device", "cpu", "--batch-size", "32", "--draws", "2", "--resamples", "20"]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "ECE selection (in-sample):" in printed and "ECE report:" in printed and str(out) in printed
    assert "beta (a=" in printed and "perfectly calibrated:" in printed
    assert "reviewing the least confident 10%" in printed
    assert (out / "model.pt").read_bytes() == (ckpt / "model.pt").read_bytes()
    _, cfg, meta = load_checkpoint(out)
    x, y = cfg.calibration
    assert len(x) == len(y) >= 2 and meta["calibrated_from"] == str(ckpt)
    record = json.loads((out / CALIBRATION_JSON).read_text())
    assert record["knots"] == {"x": x, "y": y} and record["confidence_px"] == cfg.confidence_px
    assert {(r["split"], r["stage"]) for r in record["ece"]} == {(s, t) for s in ("selection", "report")
                                                                 for t in ("before", "after")}
    assert record["method"] == "beta" and set(record["params"]) == {"a", "b", "k"} and record["seeds"] == [0, 1]
    assert {"ece_first_draw", "ece_lo", "ece_hi", "ece_floor"} <= set(record["ece"][0])
    review = {(r["split"], r["stage"], r["draws"]): r["caught_pct"] for r in record["review"]}
    assert len(review) == 8 and review["report", "before", "all"] == review["report", "after", "all"]  # order kept
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


def test_isotonic_is_still_an_option(setup, tmp_path, capsys):
    _, shards, ckpt = setup
    out = tmp_path / "iso"
    assert cli(["calibrate", "--model", str(ckpt), "--shards", *shards["train"], "--out", str(out), "--device", "cpu",
                "--method", "isotonic", "--draws", "1", "--resamples", "0", "--no-plots"]) == 0
    record = json.loads((out / CALIBRATION_JSON).read_text())
    assert record["method"] == "isotonic" and record["params"] == {} and "ece_lo" not in record["ece"][0]
    assert "isotonic fitted on" in capsys.readouterr().out and not (out / RELIABILITY_PNG).exists()
