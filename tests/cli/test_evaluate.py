"""``snapper evaluate`` on damaged shards: each broken shard counted once in the report's
stream stats, with the samples and boxes it did not deliver, and the rest evaluated."""

from __future__ import annotations

import json
from pathlib import Path

from snapper.cli import main as cli
from snapper.data.shards import shard_dataset
from tests.batchdata import TINY, tiny_checkpoint
from tests.data.shardfactory import rect_samples, write_coco_folder


def test_damaged_shards_are_counted_in_the_stream_stats(tmp_path, capsys):
    samples = rect_samples(6, boxes=2, w=2 * TINY.input_size, h=2 * TINY.input_size)
    src = write_coco_folder(tmp_path / "coco", samples)
    shards = tmp_path / "shards"
    m = shard_dataset(src / "annotations.json", src / "images", shards, split="val", shard_size=2)
    first, second = (shards / s["file"] for s in m.shards[:2])
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # a damaged copy (in the tar's end padding: it would still read)
    first.write_bytes(bytes(data))
    second.write_bytes(second.read_bytes()[:700])  # a cut copy
    ckpt = tiny_checkpoint(tmp_path / "ck")
    args = ["evaluate", "--shards", str(shards), "--model", f"snapper={ckpt}", "--device", "cpu",
            "--no-plots", "--batch-size", "8"]
    assert cli([*args, "--out-dir", str(tmp_path / "eval")]) == 0
    stats = json.loads((tmp_path / "eval" / "stream_stats.json").read_text())["snapper"]
    assert stats["shard_errors"] == 2 and stats["shard_problems"] == {"hash_mismatch": 2}  # checked, not read
    assert stats["skipped_images"] == {"shard_hash_mismatch": 4} and stats["skipped_boxes"] == {"shard_hash_mismatch": 8}
    assert stats["images"] == 2 and stats["boxes"] == 4
    assert stats["boxes"] + sum(stats["skipped_boxes"].values()) == m.counts["boxes"]  # every box accounted
    # object-storage style (no local check): the damaged copy is read, the cut one still counted once
    assert cli([*args, "--out-dir", str(tmp_path / "eval2"), "--set", "verify_shards=false"]) == 0
    stats = json.loads((tmp_path / "eval2" / "stream_stats.json").read_text())["snapper"]
    assert stats["shard_errors"] == 1 and stats["shard_problems"] == {"truncated": 1} and stats["images"] == 4
    assert stats["skipped_images"] == {"shard_truncated": 2} and stats["skipped_boxes"] == {"shard_truncated": 4}
    assert Path(tmp_path / "eval2" / "summary.md").is_file()
    assert "Table 1" in capsys.readouterr().out


def test_model_names_are_checked_in_one_line(tmp_path, capsys):
    import pytest

    assert cli(["evaluate", "--shards", "x.tar", "--model", f"identity={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'identity' is the rough-box floor's name" in err[0]
    with pytest.raises(SystemExit) as e:
        cli(["evaluate", "--shards", "x.tar", "--no-identity"])
    assert e.value.code == 2 and "give at least one --model" in capsys.readouterr().err


def test_a_manifest_naming_a_file_outside_its_folder_is_one_line(tmp_path, capsys):
    """Before: refused, but with a ShardError traceback and exit 1."""
    samples = rect_samples(2, boxes=1, w=2 * TINY.input_size, h=2 * TINY.input_size)
    src = write_coco_folder(tmp_path / "coco", samples)
    shards = tmp_path / "shards"
    m = shard_dataset(src / "annotations.json", src / "images", shards, split="val", shard_size=2)
    ckpt = tiny_checkpoint(tmp_path / "ck")
    for evil in ("../../../etc/passwd", "/etc/passwd"):
        data = json.loads(m.path.read_text())
        data["shards"][0]["file"] = evil
        m.path.write_text(json.dumps(data))
        assert cli(["evaluate", "--shards", str(shards), "--model", str(ckpt), "--device", "cpu", "--no-plots",
                    "--out-dir", str(tmp_path / "eval")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "refusing shard file name" in err[0] and evil in err[0], err
