"""COCO -> WebDataset shards: exact round trip, reproducible bytes, idempotent, resumable,
full accounting in the manifest, safe reading."""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from snapper.cli.shard import main as shard_cli
from snapper.data.coco import load_coco
from snapper.data.manifest import Manifest, ShardError, shard_urls
from snapper.data.records import IMAGE_EXTS
from snapper.data.shards import (
    ShardSpec,
    hold_out,
    iter_shard,
    plan_shards,
    remove_stale_shards,
    shard_dataset,
    split_by_image,
    write_shard,
)
from tests.cocofactory import add_image, image_bytes, make_dataset, write_json


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _mtimes(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(d.iterdir())}


def _read_wds(urls: list[str]) -> list[dict]:
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def _image_member(sample: dict) -> str:
    exts = [k for k in sample if k in IMAGE_EXTS]
    assert len(exts) == 1, sample.keys()
    return exts[0]


def test_round_trip_exact(tmp_path: Path) -> None:
    ann, images, data = make_dataset(tmp_path / "src", n_images=7, boxes_per_image=3)
    png_ids = add_image(tmp_path / "src", data, 90, "png_named.jpg", image_bytes(64, 48, 4, "PNG"))
    data["annotations"][0]["iscrowd"] = 1
    write_json(ann, data)
    m = shard_dataset(ann, images, tmp_path / "out", shard_size=3)
    urls = shard_urls(tmp_path / "out")
    assert [Path(u).name for u in urls] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    samples = _read_wds(urls)
    assert len(samples) == len(data["images"]) == m.counts["images"]
    by_name = {im["file_name"]: im for im in data["images"]}
    seen_ann: dict[int, list[float]] = {}
    for s in samples:
        side = json.loads(s["json"])
        src = by_name[side["file_name"]]
        assert s["__key__"] == f"{src['id']:012d}" and side["image_id"] == src["id"]
        assert (side["width"], side["height"]) == (src["width"], src["height"])
        ext = _image_member(s)
        assert ext == ("png" if src["id"] == 90 else "jpg")
        assert s[ext] == (images / src["file_name"]).read_bytes()  # original bytes, no re-encode
        for a in side["annotations"]:
            assert a["id"] not in seen_ann
            seen_ann[a["id"]] = a
    assert png_ids[0] in seen_ann
    for a in data["annotations"]:
        got = seen_ann[a["id"]]
        assert all(math.isclose(g, e, abs_tol=1e-6) for g, e in zip(got["bbox"], a["bbox"]))
        assert (got["category_id"], got["iscrowd"]) == (a["category_id"], a["iscrowd"])
    assert len(seen_ann) == len(data["annotations"])
    assert m.counts["crowd"] == 1 and m.counts["boxes"] == len(data["annotations"]) - 1
    # shard entries carry checksums that match the files
    for s in m.shards:
        assert _sha(tmp_path / "out" / s["file"]) == s["sha256"]
    assert m.data["source"]["sha256"] == _sha(ann)
    # tar headers are zeroed
    with tarfile.open(urls[0]) as t:
        for info in t.getmembers():
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o644)


def test_reproducible_bytes_across_runs_and_workers(tmp_path: Path) -> None:
    ann, images, _ = make_dataset(tmp_path / "src", n_images=9)
    a = shard_dataset(ann, images, tmp_path / "a", shard_size=4)
    shard_dataset(ann, images, tmp_path / "b", shard_size=4, workers=2)
    assert len(a.shards) == 3
    for s in a.shards:
        assert _sha(tmp_path / "a" / s["file"]) == _sha(tmp_path / "b" / s["file"]) == s["sha256"]
    assert (tmp_path / "a" / "train-manifest.json").read_bytes() == (tmp_path / "b" / "train-manifest.json").read_bytes()


def test_rerun_does_nothing(tmp_path: Path) -> None:
    ann, images, _ = make_dataset(tmp_path / "src", n_images=5)
    out = tmp_path / "out"
    first = shard_dataset(ann, images, out, shard_size=2)
    assert first.written == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    before = _mtimes(out)
    again = shard_dataset(ann, images, out, shard_size=2)
    assert again.written == [] and _mtimes(out) == before and again.data == first.data
    verified = shard_dataset(ann, images, out, shard_size=2, verify=True)
    assert verified.written == [] and _mtimes(out) == before


def test_resume_rewrites_only_missing_or_outdated(tmp_path: Path) -> None:
    ann, images, data = make_dataset(tmp_path / "src", n_images=6)
    out = tmp_path / "out"
    m = shard_dataset(ann, images, out, shard_size=2)
    sha = {s["file"]: s["sha256"] for s in m.shards}
    (out / "train-000001.tar").unlink()
    leftovers = [".train-000002.tar.k3j_x9q1.tmp", ".train-000001.tar.json.a8d0.tmp", ".train-manifest.json.zz1.tmp",
                 "train-000002.tar.tmp"]  # killed writers (the last: a version before snapper.atomic)
    for name in leftovers:
        (out / name).write_bytes(b"left by a crash")
    before = _mtimes(out)
    m2 = shard_dataset(ann, images, out, shard_size=2)
    assert m2.written == ["train-000001.tar"]
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if "000001" not in k} == {
        k: v for k, v in before.items() if "000001" not in k and not k.endswith(".tmp")}
    assert not [name for name in leftovers if (out / name).exists()]
    assert {s["file"]: s["sha256"] for s in m2.shards} == sha
    # a truncated shard (size differs from its marker) is rewritten too
    p = out / "train-000000.tar"
    p.write_bytes(p.read_bytes()[:1000])
    assert shard_dataset(ann, images, out, shard_size=2).written == ["train-000000.tar"]
    # changed input: only the shard holding the changed annotation is rewritten
    data["annotations"][-1]["bbox"] = [3.0, 3.0, 9.0, 9.0]  # last image -> last shard
    write_json(ann, data)
    m3 = shard_dataset(ann, images, out, shard_size=2)
    assert m3.written == ["train-000002.tar"] and m3.data["source"]["sha256"] == _sha(ann)


def test_changed_shard_size_removes_stale_shards(tmp_path: Path) -> None:
    ann, images, _ = make_dataset(tmp_path / "src", n_images=5)
    out = tmp_path / "out"
    shard_dataset(ann, images, out, shard_size=1)
    m = shard_dataset(ann, images, out, shard_size=3)
    assert sorted(p.name for p in out.glob("train-*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert [s["file"] for s in m.shards] == ["train-000000.tar", "train-000001.tar"]
    assert m.data["params"]["shard_size"] == 3


def _bad_inputs(root: Path) -> tuple[Path, Path, dict, dict[int, str | None]]:
    ann, images, data = make_dataset(root, n_images=2, boxes_per_image=1)
    expect: dict[int, str | None] = {100: None, 800: None}
    jpg = image_bytes(64, 48, 11)
    ids = add_image(root, data, 30, "boxes.jpg", jpg, boxes=[
        [math.nan, 1, 5, 5], [1, 1, 0, 5], [100, 1, 5, 5], [-4, 1, 10, 5], [1, 1, 0.25, 5], [2, 2, 20, 20]])
    data["annotations"][-1]["iscrowd"] = 1
    expect.update(zip(ids, ["non_finite", "degenerate", "outside_image", None, "too_small", None]))
    for a in add_image(root, data, 31, "gone.jpg", jpg):
        expect[a] = "image_missing"
    (images / "gone.jpg").unlink()
    for a in add_image(root, data, 32, "corrupt.jpg", b"not an image at all"):
        expect[a] = "image_corrupt"
    for a in add_image(root, data, 33, "wrong_size.jpg", jpg, width=65):
        expect[a] = "image_size_mismatch"
    write_json(ann, data)
    return ann, images, data, expect


def test_bad_inputs_are_counted_in_manifest_and_accounted(tmp_path: Path) -> None:
    ann, images, data, expect = _bad_inputs(tmp_path / "src")
    m = shard_dataset(ann, images, tmp_path / "out", shard_size=2)
    skipped = {s["annotation_id"]: s["reason"] for s in m.data["skipped"] if s["annotation_id"] is not None}
    assert skipped == {i: r for i, r in expect.items() if r is not None}
    assert m.skip_counts == {"degenerate": 1, "image_corrupt": 1, "image_missing": 1, "image_size_mismatch": 1,
                             "non_finite": 1, "outside_image": 1, "too_small": 1}
    assert m.data["image_skip_counts"] == {"image_corrupt": 1, "image_missing": 1, "image_size_mismatch": 1}
    assert m.data["clipped_annotation_ids"] == [3003] and m.counts["crowd"] == 1
    # accounting over what was really written: input == in shards + skipped, by id
    in_shards = [a["id"] for s in _read_wds(shard_urls(tmp_path / "out")) for a in json.loads(s["json"])["annotations"]]
    input_ids = [a["id"] for a in data["annotations"]]
    assert sorted(in_shards + list(skipped)) == sorted(input_ids)
    assert len(set(in_shards) | set(skipped)) == len(input_ids) == m.counts["annotations_input"]
    clipped = next(a for s in _read_wds(shard_urls(tmp_path / "out")) for a in json.loads(s["json"])["annotations"]
                   if a["id"] == 3003)
    assert clipped["bbox"] == [0.0, 1.0, 6.0, 5.0]


def test_malformed_json_fails_before_writing(tmp_path: Path) -> None:
    ann, images, data = make_dataset(tmp_path / "src", n_images=2)
    del data["annotations"][0]["bbox"]
    write_json(ann, data)
    with pytest.raises(ValueError, match='annotation id 100 lacks "bbox"'):
        shard_dataset(ann, images, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_image_ids_filter_and_split_by_image(tmp_path: Path) -> None:
    ann, images, _ = make_dataset(tmp_path / "src", n_images=40, boxes_per_image=1)
    ix = load_coco(ann, images)
    train, val = split_by_image(ix, 0.25, seed=3)
    assert (train, val) == split_by_image(ix, 0.25, seed=3)
    assert sorted(train + val) == ix.input_image_ids and not set(train) & set(val)
    assert 3 <= len(val) <= 20
    assert split_by_image(ix, 0.25, seed=4) != (train, val)
    # membership depends on the image only: a subset keeps its assignment
    small = ix.subset(ix.input_image_ids[:20])
    assert set(split_by_image(small, 0.25, seed=3)[1]) == {i for i in val if i in small.input_annotations}
    assert split_by_image(ix.subset(ix.input_image_ids[:2]), 0.01)[1] != []  # never an empty val by chance
    mt = shard_dataset(ann, images, tmp_path / "out", split="train", image_ids=train)
    mv = shard_dataset(ann, images, tmp_path / "out", split="val", image_ids=val)
    got_t = [int(s["__key__"]) for s in _read_wds(shard_urls(tmp_path / "out", "train"))]
    got_v = [int(s["__key__"]) for s in _read_wds(shard_urls(tmp_path / "out", "val"))]
    assert (got_t, got_v) == (train, val)
    assert mt.counts["annotations_input"] + mv.counts["annotations_input"] == 40


def _tar_with(members: list[tuple[tarfile.TarInfo, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for info, data in members:
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_iter_shard_reads_ours_and_rejects_tampered_members(tmp_path: Path) -> None:
    ann, images, _ = make_dataset(tmp_path / "src", n_images=3)
    m = shard_dataset(ann, images, tmp_path / "out", shard_size=5)
    got = list(iter_shard(tmp_path / "out" / m.shards[0]["file"]))
    assert [(k, e, side["image_id"]) for k, e, _, side in got] == [(f"{i:012d}", "jpg", i) for i in (1, 8, 15)]
    assert got[0][2] == (images / "img_000.jpg").read_bytes()
    link = tarfile.TarInfo("000000000001.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for members, msg in [
        ([(tarfile.TarInfo("../000000000001.json"), b"{}")], "unexpected member '../000000000001.json'"),
        ([(tarfile.TarInfo("/abs/1.json"), b"{}")], "unexpected member"),
        ([(tarfile.TarInfo("a.b.json"), b"{}")], "unexpected member 'a.b.json'"),
        ([(link, b"")], "unexpected member"),
        ([(tarfile.TarInfo("1.json"), b"{}")], "expected one image \\+ json"),
    ]:
        with pytest.raises(ShardError, match=msg):
            list(iter_shard(_tar_with(members)))
    assert not (tmp_path / "etc").exists()


def test_spec_round_trips_as_json(tmp_path: Path) -> None:
    ann, images, _ = make_dataset(tmp_path / "src", n_images=3)
    specs = plan_shards(load_coco(ann, images), shard_size=2, split="val")
    assert [s.name for s in specs] == ["val-000000.tar", "val-000001.tar"]
    again = [ShardSpec.from_dict(json.loads(json.dumps(s.to_dict()))) for s in specs]
    assert again == specs
    info = write_shard(again[1], tmp_path / "o")
    assert info.written and info.samples == 1 and not write_shard(specs[1], tmp_path / "o").written
    with pytest.raises(ValueError, match="split name"):
        plan_shards(load_coco(ann, images), 2, split="../x")
    with pytest.raises(ValueError, match="shard_size"):
        plan_shards(load_coco(ann, images), 0)


def test_remove_stale_shards_leaves_other_splits_and_files_alone(tmp_path: Path) -> None:
    names = ["train-000000.tar", "train-000000.tar.json", "train-000001.tar", "train-000001.tar.json",
             ".train-000000.tar.q1w2e3.tmp", "val-000005.tar", ".val-000000.tar.q1w2e3.tmp", "train-manifest.json",
             "notes.txt", ".hidden"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    removed = remove_stale_shards(tmp_path, "train", {"train-000000.tar"})
    assert removed == [".train-000000.tar.q1w2e3.tmp", "train-000001.tar", "train-000001.tar.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - set(removed))


def test_hold_out(tmp_path: Path) -> None:
    ann, images, _ = make_dataset(tmp_path / "src", n_images=10, boxes_per_image=1)
    ix = load_coco(ann, images)
    assert hold_out(ix, "all") == ([("all", None)], {})
    jobs, params = hold_out(ix, "train", 0.3, seed=2)
    assert [j[0] for j in jobs] == ["train", "val"] and params == {"val_fraction": 0.3, "seed": 2}
    assert (jobs[0][1], jobs[1][1]) == split_by_image(ix, 0.3, seed=2)
    with pytest.raises(ValueError, match="val"):
        hold_out(ix, "val", 0.3)


# --------------------------------------------------------- snapper shard (snapper/cli/shard.py)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann, images, _, _ = _bad_inputs(tmp_path / "src")
    out = tmp_path / "out"
    rc = shard_cli([str(ann), str(images), str(out), "--shard-size", "2", "--val-fraction", "0.3", "--seed", "1"])
    text = capsys.readouterr().out
    assert rc == 0 and "[train]" in text and "[val]" in text
    t, v = Manifest.load(out / "train-manifest.json"), Manifest.load(out / "val-manifest.json")
    assert t.counts["images_input"] + v.counts["images_input"] == 6
    assert t.counts["images_input"] >= 1 and v.counts["images_input"] >= 1
    assert t.data["params"]["min_box_size"] == 1.0 and t.data["params"]["val_fraction"] == 0.3
    total: dict[str, int] = {}
    for man in (t, v):
        for k, n in man.skip_counts.items():
            total[k] = total.get(k, 0) + n
            assert f"{k}={n}" in text
    assert total == {"degenerate": 1, "image_corrupt": 1, "image_missing": 1, "image_size_mismatch": 1,
                     "non_finite": 1, "outside_image": 1, "too_small": 1}
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert shard_cli([str(bad), str(images), str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--shard-size", "0"], "--shard-size"),
    (["--min-box-size", "nan"], "--min-box-size"),
    (["--val-fraction", "0.2", "--split", "val"], "--split must not be 'val'"),
])
def test_cli_rejects_bad_options_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 args: list[str], message: str) -> None:
    ann, images, _ = make_dataset(tmp_path / "src", n_images=2)
    with pytest.raises(SystemExit) as e:
        shard_cli([str(ann), str(images), str(tmp_path / "out"), *args])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_skips_one_oversized_box_and_shards_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann, images, data = make_dataset(tmp_path / "src", n_images=2, boxes_per_image=2)
    data["annotations"][1]["bbox"] = [10**400, 0, 10, 10]  # JSON allows it; no float holds it
    ann.write_text(json.dumps(data))
    assert shard_cli([str(ann), str(images), str(tmp_path / "out"), "--shard-size", "1"]) == 0
    assert "out_of_range=1" in capsys.readouterr().out
    m = Manifest.load(tmp_path / "out" / "train-manifest.json")
    assert m.skip_counts == {"out_of_range": 1}
    (skip,) = m.data["skipped"]
    assert skip["annotation_id"] == data["annotations"][1]["id"] and skip["reason"] == "out_of_range"
    kept = [s[3]["annotations"] for f in sorted((tmp_path / "out").glob("train-*.tar")) for s in iter_shard(f)]
    kept_ids = sorted(a["id"] for anns in kept for a in anns)
    assert kept_ids == sorted(a["id"] for a in data["annotations"] if a is not data["annotations"][1])
    assert m.counts["annotations_input"] == m.counts["annotations_kept"] + m.counts["annotations_skipped"] == 4


def test_cli_refuses_a_misspelled_images_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann, images, _ = make_dataset(tmp_path / "src", n_images=2)
    assert shard_cli([str(ann), str(images) + "s", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{images}s" in err[0] and not (tmp_path / "out").exists()


def test_cli_names_an_unwritable_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann, images, _ = make_dataset(tmp_path / "src", n_images=2)
    (images / "img_001.jpg").write_bytes(b"GIF89a" + bytes(64))  # not a format shards carry
    assert shard_cli([str(ann), str(images), str(tmp_path / "out"), "--check-images", "none"]) == 2
    assert "img_001.jpg is not one of" in capsys.readouterr().err


def test_coco128(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "coco128-train"
    m = shard_dataset(src / "annotations.json", src / "images", tmp_path / "coco128", shard_size=64)
    data = json.loads((src / "annotations.json").read_text())
    assert m.counts["images"] == len(data["images"]) == 128
    assert m.counts["annotations_input"] == len(data["annotations"]) == m.counts["annotations_kept"] + m.counts[
        "annotations_skipped"]
    samples = _read_wds(shard_urls(tmp_path / "coco128"))
    assert len(samples) == 128 and len(m.shards) == 2
    s = samples[5]
    side = json.loads(s["json"])
    assert s["jpg"] == (src / "images" / side["file_name"]).read_bytes()
    assert sum(len(json.loads(x["json"])["annotations"]) for x in samples) == m.counts["annotations_kept"]
