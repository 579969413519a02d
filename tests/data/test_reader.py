"""The one safe shard reader: member names checked, truncated tars counted once with what
they did not deliver, local shards checked against their manifest's sha256 before reading."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from snapper.config import JitterConfig, ModelConfig
from snapper.data.accounting import Tally
from snapper.data.eval_stream import eval_batches
from snapper.data.reader import ShardProblem, iter_samples, manifest_entry, shard_samples
from snapper.data.train_stream import train_loader
from tests.data.shardfactory import cfg_for, rect_samples, write_shards


def _tar(members: list[tuple[str, bytes]], path: Path) -> str:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def _stream_ids(urls: list[str], verify: bool = True):
    it = eval_batches(urls, ModelConfig(input_size=32), JitterConfig(), batch_size=4, verify_shards=verify)
    ids = sorted(int(i) for b in it for i in b["image_id"])
    return ids, it.stats


def test_member_names_are_checked_where_the_streams_read(tmp_path):
    good = rect_samples(2, boxes=1)
    s = good[0]
    evil = [(f"{s['key']}.png", s["image"]), (f"{s['key']}.json", json.dumps(s["meta"]).encode()),
            ("../../evil.jpg", s["image"]), ("000000000009.json", b"{}")]
    urls = [_tar(evil, tmp_path / "evil.tar"), *write_shards(tmp_path / "ok", good[1:], per_shard=1)]
    ids, stats = _stream_ids(urls)
    assert ids == [1, 2]  # the sample before the bad member, and the next shard; never the evil member
    assert stats.shard_errors == 1 and stats.shard_problems == {"bad_member": 1}
    with pytest.raises(ShardProblem, match=r"unexpected member '\.\./\.\./evil\.jpg'") as e:
        list(iter_samples(open(urls[0], "rb"), urls[0]))
    assert e.value.reason == "bad_member"
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tf:
        info = tarfile.TarInfo("000000000001.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    tally = Tally()
    assert list(shard_samples([str(link)], tally)) == [] and tally.stats.shard_problems == {"bad_member": 1}


def test_a_truncated_shard_is_one_error_with_its_lost_samples_counted(coco_shards):
    out, manifest = coco_shards  # three shards of two images, two boxes each
    urls = [str(out / s["file"]) for s in manifest.shards]
    whole = Path(urls[1]).read_bytes()
    first_sample_end = whole.index(b"000000000004.")  # where the second sample's first header starts
    # cut at a member boundary, inside a header, inside the first image (tarfile notices only the last)
    for cut, delivered in ((first_sample_end, 1), (first_sample_end + 1024 + 300, 1), (700, 0)):
        Path(urls[1]).write_bytes(whole[:cut])
        ids, stats = _stream_ids(urls, verify=False)  # as if streamed from object storage
        assert len(set(ids)) == 4 + delivered and len(ids) == 2 * len(set(ids))
        assert stats.shard_errors == 1 and stats.shard_problems == {"truncated": 1}
        assert stats.skipped_images == {"shard_truncated": 2 - delivered}
        assert stats.skipped_boxes == {"shard_truncated": 2 * (2 - delivered)}
        assert stats.images + stats.n_skipped_images == manifest.counts["images"]
        assert stats.boxes + sum(stats.skipped_boxes.values()) == manifest.counts["boxes"]


def test_local_shards_are_checked_against_the_manifest_before_reading(coco_shards):
    out, manifest = coco_shards
    urls = [str(out / s["file"]) for s in manifest.shards]
    assert manifest_entry(urls[0])["sha256"] == manifest.shards[0]["sha256"]
    assert manifest_entry(str(out / "unlisted-000000.tar")) is None and manifest_entry("pipe:cat x.tar") is None
    data = bytearray(Path(urls[2]).read_bytes())
    data[1000] ^= 0xFF  # one flipped byte in the padding after the first image: everything still reads
    Path(urls[2]).write_bytes(bytes(data))
    ids, stats = _stream_ids(urls)
    assert len(set(ids)) == 4 and stats.shard_problems == {"hash_mismatch": 1}
    assert stats.skipped_images == {"shard_hash_mismatch": 2} and stats.skipped_boxes == {"shard_hash_mismatch": 4}
    ids, stats = _stream_ids(urls, verify=False)  # data.verify_shards=false: read as it is
    assert len(set(ids)) == 6 and stats.shard_errors == 0
    # the training stream reads through the same reader
    loader = train_loader(cfg_for(urls, resampled=False))
    n = sum(len(b["image_id"]) for b in loader)
    assert n == 8 and loader.stats.shard_problems == {"hash_mismatch": 1}
    loader = train_loader(cfg_for(urls, resampled=False, verify_shards=False))
    assert sum(len(b["image_id"]) for b in loader) == 12 and loader.stats.shard_errors == 0
