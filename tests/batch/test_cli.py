"""``snapper batch-snap``: single file, folder, and one-line errors with exit status 2."""

from __future__ import annotations

import json

import pytest

from snapper import batch as B
from snapper.cli import main as cli
from snapper.config import BatchConfig


def test_cli_single_file_folder_and_errors(rough, ckpt, tmp_path, capsys):
    ann, images, data = rough
    args = ["--checkpoint", str(ckpt), "--chunk-images", "3", "--workers", "0", "--device", "cpu",
            "--review-threshold", "0.01"]
    assert cli(["batch-snap", str(ann), str(images), str(tmp_path / "o1"), *args]) == 0
    s = json.loads((tmp_path / "o1" / B.SUMMARY_JSON).read_text())
    assert s["config"]["review_threshold"] == 0.01 and s["config"]["chunk_images"] == 3
    assert "annotations" in capsys.readouterr().out
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "one.json").write_text(ann.read_text())
    small = dict(data, annotations=data["annotations"][:3])
    (folder / "two.json").write_text(json.dumps(small))
    assert cli(["batch-snap", str(folder), str(images), str(tmp_path / "o2"), *args]) == 0
    assert len(json.loads((tmp_path / "o2" / "two" / B.OUTPUT_JSON).read_text())["annotations"]) == 3
    assert (tmp_path / "o2" / "one" / B.BOXES_PARQUET).is_file()
    (folder / "broken.json").write_text("{")
    assert cli(["batch-snap", str(folder / "broken.json"), str(images), str(tmp_path / "o3"), *args]) == 2
    assert "broken.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    "opts, match",
    [(["--buffer-ratio", "0"], "--buffer-ratio"), (["--buffer-ratio", "nan"], "--buffer-ratio"),
     (["--review-threshold", "1.5"], "--review-threshold"), (["--batch-size", "0"], "--batch-size"),
     (["--chunk-images", "x"], "--chunk-images"), (["--workers", "-1"], "--workers"),
     (["--set", "batch_size=abc"], "batch_size"), (["--set", "no_such_field=1"], "no_such_field"),
     (["--set", "buffer_ratio=-1"], "buffer_ratio"), (["--set", "precision=fp8"], "precision")],
)
def test_bad_options_exit_2_before_any_work(rough, tmp_path, capsys, opts, match):
    ann, images, _ = rough
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli(["batch-snap", str(ann), str(images), str(out), "--checkpoint", str(tmp_path / "no-model"), *opts])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[-1] and "Traceback" not in "".join(err)
    assert not out.exists()  # nothing was written


def test_set_and_named_options_reach_the_config(rough, ckpt, tmp_path):
    ann, images, _ = rough
    args = ["--checkpoint", str(ckpt), "--workers", "0", "--device", "cpu", "--set", "review_moved_frac=0.5",
            "--set", "chunk_images=5", "--chunk-images", "4", "--set", "fuse_key=null", "--buffer-ratio", "1.25"]
    assert cli(["batch-snap", str(ann), str(images), str(tmp_path / "o"), *args]) == 0
    c = json.loads((tmp_path / "o" / B.SUMMARY_JSON).read_text())["config"]
    assert (c["review_moved_frac"], c["chunk_images"], c["fuse_key"], c["buffer_ratio"]) == (0.5, 4, None, 1.25)
    assert c["batch_size"] == BatchConfig().batch_size  # defaults come from BatchConfig


def test_truth_with_a_folder_is_refused(rough, tmp_path, capsys):
    ann, images, _ = rough
    assert cli(["batch-snap", str(ann.parent), str(images), str(tmp_path / "o"), "--truth", str(ann)]) == 2
    assert "--truth needs a single rough file" in capsys.readouterr().err
