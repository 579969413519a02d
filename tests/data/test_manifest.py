"""Finding shards: every URL form ``expand_urls`` accepts, and manifests turned into exact
shard lists (local paths or the same URL scheme as the manifest's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds

from snapper.data.manifest import ShardError, count_from_manifests, count_images, expand_urls, shard_urls
from snapper.data.shards import shard_dataset
from tests.cocofactory import make_dataset


def test_expand_urls(rect_shards):
    paths = rect_shards(4, per_shard=1)
    folder = Path(paths[0]).parent
    assert expand_urls(str(folder / "shard-{00000..00003}.tar")) == paths
    assert expand_urls(str(folder / "*.tar")) == paths
    assert expand_urls(str(folder)) == paths
    assert expand_urls(f"{paths[0]}::{paths[1]}") == paths[:2]
    assert expand_urls(["pipe:cat x.tar"]) == ["pipe:cat x.tar"]
    with pytest.raises(FileNotFoundError, match="shard-00009"):
        expand_urls(str(folder / "shard-00009.tar"))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_urls(str(folder / "nope-*.tar"))
    assert count_images(paths) == 4 and count_images(["pipe:cat x.tar"]) is None


def test_expand_urls_reads_shard_manifests(coco_shards):
    out, manifest = coco_shards
    urls = expand_urls(str(out))
    assert len(urls) == 3 and urls == expand_urls(str(out / "train-manifest.json"))
    assert urls == shard_urls(out) == shard_urls(manifest)
    assert count_from_manifests([str(out / "train-manifest.json")]) == 6
    assert count_from_manifests([str(out)]) is None  # not every entry names a manifest
    (out / "val-manifest.json").write_text((out / "train-manifest.json").read_text())
    with pytest.raises(ValueError, match="several splits"):
        expand_urls(str(out))


def _read_wds(urls: list[str]) -> list[dict]:
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_shard_urls_pipe_and_relative(tmp_path: Path) -> None:
    ann, images, _ = make_dataset(tmp_path / "src", n_images=3)
    out = tmp_path / "out"
    m = shard_dataset(ann, images, out, shard_size=2)
    manifest = out / "train-manifest.json"
    assert all(s["file"] == Path(s["file"]).name for s in m.shards)  # relative names only
    assert shard_urls(manifest) == shard_urls(out) == shard_urls(m) == [str(out / s["file"]) for s in m.shards]
    urls = shard_urls(f"pipe:cat {manifest}")  # stands in for `pipe:aws s3 cp s3://b/x/train-manifest.json -`
    assert urls == [f"pipe:cat {out / s['file']}" for s in m.shards]
    assert expand_urls(f"pipe:cat {manifest}") == urls
    assert [s["__key__"] for s in _read_wds(urls)] == [f"{i:012d}" for i in (1, 8, 15)]
    with pytest.raises(ValueError, match="does not name"):
        shard_urls("pipe:cat /x/val-manifest.json")
    evil = json.loads(manifest.read_text())
    evil["shards"][0]["file"] = "x.tar; rm -rf ~"
    (out / "evil").mkdir()
    (out / "evil" / "train-manifest.json").write_text(json.dumps(evil))
    with pytest.raises(ShardError, match="refusing"):
        shard_urls(out / "evil")
