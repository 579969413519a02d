"""The inbox claim protocol without Prefect: atomic claims, heartbeats, takeover of stale
claims, giving up after max_attempts, and failures that never block the other files."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
import zipfile
from pathlib import Path

import pytest

from snapper.batch import OUTPUT_JSON
from snapper.batch import inbox as ib
from snapper.formats import voc, yolo
from tests.batchdata import fast_config, make_rough, tiny_checkpoint
from tests.formats.data import CVAT, base_coco, gt_manifest, make_images

OLD = time.time() - 7200  # two hours ago: older than any stale limit used here


def _age(path: Path) -> None:
    os.utime(path, (OLD, OLD))


def test_claim_moves_new_files_into_processing(tmp_path):
    for name in ("b.json", "a.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "notes.txt").write_text("not a rough file")
    claims = ib.claim_files(tmp_path, "run1")
    assert [c["name"] for c in claims] == ["a.json", "b.json"] and {c["attempt"] for c in claims} == {1}
    assert [Path(c["claimed"]).name for c in claims] == ["a.run1-1.json", "b.run1-1.json"]
    assert all(Path(c["claimed"]).parent == tmp_path / ib.PROCESSING for c in claims)
    assert not list(tmp_path.glob("*.json")) and (tmp_path / "notes.txt").exists()
    assert ib.claim_files(tmp_path, "run2") == []  # nothing left for a second run


def test_young_files_and_the_limit_wait_for_a_later_run(tmp_path):
    for i in range(3):
        (tmp_path / f"f{i}.json").write_text("{}")
    _age(tmp_path / "f0.json")
    assert [c["name"] for c in ib.claim_files(tmp_path, "c1", min_age_s=3600)] == ["f0.json"]
    assert [c["name"] for c in ib.claim_files(tmp_path, "c2", limit=1)] == ["f1.json"]
    assert (tmp_path / "f2.json").exists()


def test_claim_ids_are_unique_and_name_safe():
    ids = {ib.new_claim_id("8c1e-4f2a-9b7d") for _ in range(50)}
    assert len(ids) == 50 and all(i.isalnum() for i in ids) and all(i.startswith("8c1e4f2a") for i in ids)
    assert ib.new_claim_id().isalnum()


def _claimer(inbox: str, claim_id: str, start, out) -> None:
    start.wait()
    out.put((claim_id, [c["name"] for c in ib.claim_files(inbox, claim_id)]))


def test_claims_are_exclusive_across_processes(tmp_path):
    """The inbox's guarantee at its root: racing claimers never get the same file."""
    for i in range(300):
        (tmp_path / f"f{i:03d}.json").write_text("{}")
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(str(tmp_path), f"c{k}", start, out)) for k in range(3)]
    for p in procs:
        p.start()
    start.set()
    got = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    names = [n for v in got.values() for n in v]
    assert len(names) == len(set(names)) == 300
    assert len(os.listdir(tmp_path / "processing")) == 300 and not list(tmp_path.glob("*.json"))


def test_claims_are_exclusive_across_threads(tmp_path):
    for i in range(100):
        (tmp_path / f"f{i:03d}.json").write_text("{}")
    got: list[list[str]] = []
    threads = [threading.Thread(target=lambda k=k: got.append([c["name"] for c in ib.claim_files(tmp_path, f"t{k}")]))
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [n for v in got for n in v]
    assert len(names) == len(set(names)) == 100


def test_claim_stamps_the_claim_time_and_heartbeat_keeps_it_fresh(tmp_path):
    f = tmp_path / "waited.json"
    f.write_text("{}")
    _age(f)  # sat in the inbox for two hours before being claimed
    (claim,) = ib.claim_files(tmp_path, "c1")
    assert claim["attempt"] == 1 and not ib.stale_claims(tmp_path, 3600)
    claimed = Path(claim["claimed"])
    _age(claimed)
    assert ib.stale_claims(tmp_path, 3600) == [claimed]
    with ib.heartbeat(claimed, 0.02):
        time.sleep(0.2)
    assert not ib.stale_claims(tmp_path, 3600)
    assert ib.heartbeat_interval(3600) == 60.0 and ib.heartbeat_interval(20) == 5.0


def test_stale_claim_is_taken_over_with_the_next_attempt(tmp_path):
    proc = tmp_path / ib.PROCESSING
    proc.mkdir()
    for name in ("killed.dead0001-1.json", "busy.live0002-1.json"):
        (proc / name).write_text("{}")
    _age(proc / "killed.dead0001-1.json")
    assert ib.has_work(tmp_path, 3600)
    claims, abandoned = ib.reclaim_stale(tmp_path, "new1", 3600, max_attempts=3)
    assert claims == [{"name": "killed.json", "claimed": str(proc / "killed.new1-2.json"), "attempt": 2}]
    assert abandoned == [] and ib.parse_claim(proc / "killed.new1-2.json") == ("killed.json", 2)
    assert sorted(p.name for p in proc.iterdir()) == ["busy.live0002-1.json", "killed.new1-2.json"]
    assert not ib.stale_claims(tmp_path, 3600)  # the takeover is a fresh claim
    assert not ib.has_work(tmp_path, 3600)  # the live claim belongs to a running run


def test_after_max_attempts_the_file_fails_with_a_report(tmp_path):
    proc = tmp_path / ib.PROCESSING
    proc.mkdir()
    (proc / "cursed.dead0002-3.json").write_text('{"images": []}')
    _age(proc / "cursed.dead0002-3.json")
    (tmp_path / ib.FAILED).mkdir()
    (tmp_path / ib.FAILED / "cursed.json").write_text("an earlier failure of the same name")
    rnd = ib.claim_round(tmp_path, "new2", stale_after_s=3600, max_attempts=3)
    assert rnd.claims == [] and len(rnd.abandoned) == 1
    a = rnd.abandoned[0]
    assert a["status"] == "failed" and a["error"] == "abandoned after 3 attempt(s)"
    dest = Path(a["input"])
    assert dest == tmp_path / ib.FAILED / "cursed.1.json"  # the earlier file is kept
    assert dest.read_text() == '{"images": []}' and not list(proc.iterdir())
    assert "abandoned after 3 attempt(s)" in (tmp_path / ib.FAILED / "cursed.1.error.txt").read_text()
    with pytest.raises(ValueError, match="max_attempts"):
        ib.claim_round(tmp_path, "x", max_attempts=0)


def test_images_for_prefers_a_folder_named_after_the_file(tmp_path):
    (tmp_path / "batch7").mkdir()
    assert ib.images_for("batch7", tmp_path) == tmp_path / "batch7"
    assert ib.images_for("other", tmp_path) == tmp_path


def test_bad_file_fails_alone_and_never_blocks_the_others(tmp_path):
    _, images, data = make_rough(tmp_path / "src")
    ckpt = tiny_checkpoint(tmp_path / "ck")
    box = tmp_path / "inbox"
    box.mkdir()
    small = {**data, "annotations": [a for a in data["annotations"] if a.get("image_id") == 1][:3]}
    (box / "a_broken.json").write_text('{"images": [], "annotations": [')
    (box / "b_good.json").write_text(json.dumps(small))
    (box / "c_noimages.json").write_text(json.dumps(small))
    rnd = ib.claim_round(box, "run1")
    assert [c["name"] for c in rnd.claims] == ["a_broken.json", "b_good.json", "c_noimages.json"]
    outbox = tmp_path / "outbox"
    results = []
    for c in rnd.claims:
        root = tmp_path / "nowhere" if c["name"] == "c_noimages.json" else images
        results.append(ib.process_claimed(c, box, root, outbox, ckpt, fast_config(), heartbeat_s=0.05))
    assert [r["status"] for r in results] == ["failed", "done", "failed"]
    assert "not valid JSON" in results[0]["error"] and "images folder" in results[2]["error"]
    assert results[1]["annotations"] == 3 and results[1]["summary"]["n_annotations"] == 3
    assert (outbox / "b_good" / OUTPUT_JSON).is_file()
    assert sorted(p.name for p in (box / ib.DONE).iterdir()) == ["b_good.json"]
    assert sorted(p.name for p in (box / ib.FAILED).iterdir()) == [
        "a_broken.error.txt", "a_broken.json", "c_noimages.error.txt", "c_noimages.json"]
    report = (box / ib.FAILED / "a_broken.error.txt").read_text()
    assert "a_broken.json" in report and "not valid JSON" in report and "Traceback" in report
    assert not list((box / ib.PROCESSING).iterdir())
    rows = ib.file_rows(results, [])
    assert len(rows) == 3 and all("summary" not in r for r in rows)


def test_a_resubmitted_file_is_snapped_against_the_images_as_they_are_now(tmp_path):
    """The outbox's chunk results are keyed on the images' contents: dropping the same file in
    again after its missing image arrived snaps that image instead of reusing the old verdict."""
    _, images, data = make_rough(tmp_path / "src")
    ckpt = tiny_checkpoint(tmp_path / "ck")
    box, outbox = tmp_path / "inbox", tmp_path / "outbox"
    box.mkdir()
    sub = {**data, "annotations": [a for a in data["annotations"] if a.get("image_id") in (1, 3)]}
    results = []
    for round_ in range(2):
        (box / "job.json").write_text(json.dumps(sub))
        rnd = ib.claim_round(box, f"run{round_}")
        results += [ib.process_claimed(c, box, images, outbox, ckpt, fast_config(), heartbeat_s=0.05)
                    for c in rnd.claims]
        out = json.loads((outbox / "job" / OUTPUT_JSON).read_text())
        assert [a["id"] for a in out["annotations"]] == [a["id"] for a in sub["annotations"]]
        (images / "missing.jpg").write_bytes((images / "a.jpg").read_bytes())  # arrives after the first run
    assert [r["status"] for r in results] == ["done", "done"]
    verdicts = [r["summary"]["reasons"].get("image_missing", 0) for r in results]
    assert verdicts == [1, 0]
    assert results[1]["summary"]["n_chunks_reused"] == 0
    assert sorted(p.name for p in (box / ib.DONE).iterdir()) == ["job.1.json", "job.json"]


@pytest.mark.parametrize("suffix", [".json", ".manifest"])
def test_a_ground_truth_manifest_is_snapped_and_written_back(tmp_path, suffix):
    images = make_images(tmp_path / "src")
    facts = gt_manifest(tmp_path / "job.manifest")
    box = tmp_path / "inbox"
    box.mkdir()
    (tmp_path / "job.manifest").rename(box / f"job{suffix}")
    (box / "notes.txt").write_text("not a rough file")
    rnd = ib.claim_round(box, "run1")
    assert [c["name"] for c in rnd.claims] == [f"job{suffix}"]
    (r,) = [ib.process_claimed(c, box, images, tmp_path / "outbox", tiny_checkpoint(tmp_path / "ck"), fast_config(),
                               heartbeat_s=0.05) for c in rnd.claims]
    assert r["status"] == "done" and r["annotations"] == facts["n_boxes"]
    written = list((tmp_path / "outbox" / "job" / "snapped").iterdir())
    assert [p.suffix for p in written] == [suffix]
    assert sorted(p.name for p in (box / ib.DONE).iterdir()) == [f"job{suffix}"]


def test_a_killed_claim_of_an_xml_file_keeps_its_suffix(tmp_path):
    box = tmp_path / "inbox"
    box.mkdir()
    (box / "task.xml").write_text(CVAT)
    (c,) = ib.claim_round(box, "run1").claims
    assert Path(c["claimed"]).name == "task.run1-1.xml"
    os.utime(c["claimed"], (0, 0))  # the run was killed: the claim went stale
    (again,) = ib.claim_round(box, "run2", stale_after_s=60).retried
    assert again["name"] == "task.xml" and Path(again["claimed"]).name == "task.run2-2.xml"


def _zip_folder(folder: Path, arc: Path, prefix: str = "") -> None:
    with zipfile.ZipFile(arc, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.iterdir()):
            z.write(p, prefix + p.name)


@pytest.mark.parametrize("fmt, prefix", [("voc", "Annotations/"), ("yolo", "")])
def test_a_zipped_voc_or_yolo_folder_is_snapped_and_written_back(tmp_path, fmt, prefix):
    images = make_images(tmp_path / "src")
    coco = base_coco()
    (voc if fmt == "voc" else yolo).write(coco, None, tmp_path / fmt)
    box = tmp_path / "inbox"
    box.mkdir()
    _zip_folder(tmp_path / fmt, box / f"crowd-{fmt}.zip", prefix)
    (c,) = ib.claim_round(box, "run1").claims
    assert Path(c["claimed"]).name == f"crowd-{fmt}.run1-1.zip"
    r = ib.process_claimed(c, box, images, tmp_path / "outbox", tiny_checkpoint(tmp_path / "ck"), fast_config(),
                           heartbeat_s=0.05)
    assert r["status"] == "done", r["error"]
    assert r["annotations"] == len(coco["annotations"])  # every box of the folder accounted for
    out = tmp_path / "outbox" / f"crowd-{fmt}"
    assert json.loads((out / "format.json").read_text())["format"] == fmt
    written = sorted(p.name for p in (out / "snapped").iterdir())
    inputs = sorted(p.name for p in (tmp_path / fmt).iterdir())  # each file written back (YOLO: + the CSV)
    assert written == (inputs if fmt == "voc" else sorted([*inputs, yolo.CSV_NAME]))
    assert [p.name for p in (box / ib.DONE).iterdir()] == [f"crowd-{fmt}.zip"]


def test_a_zip_with_a_path_out_of_the_folder_fails_alone(tmp_path):
    images = make_images(tmp_path / "src")
    box = tmp_path / "inbox"
    box.mkdir()
    with zipfile.ZipFile(box / "evil.zip", "w") as z:
        z.writestr("../../escaped.xml", "<annotation/>")
    (c,) = ib.claim_round(box, "run1").claims
    r = ib.process_claimed(c, box, images, tmp_path / "outbox", tiny_checkpoint(tmp_path / "ck"), fast_config(),
                           heartbeat_s=0.05)
    assert r["status"] == "failed" and "member '../../escaped.xml' leaves the archive's folder" in r["error"]
    assert not list(tmp_path.rglob("escaped.xml"))
    assert (box / ib.FAILED / "evil.zip").is_file() and (box / ib.FAILED / "evil.error.txt").is_file()


def test_each_input_gets_its_own_output_folder(tmp_path):
    """Before: ``a.json`` and ``a.zip`` (or a changed ``a.json`` dropped again) were both
    ``done`` with one set of outputs, the first file's overwritten."""
    _, images, data = make_rough(tmp_path / "src")
    ckpt = tiny_checkpoint(tmp_path / "ck")
    box, outbox = tmp_path / "inbox", tmp_path / "outbox"
    box.mkdir()
    first = {**data, "annotations": [a for a in data["annotations"] if a.get("image_id") == 1]}
    second = {**data, "annotations": [a for a in data["annotations"] if a.get("image_id") == 2]}
    (box / "a.json").write_text(json.dumps(first))
    with zipfile.ZipFile(box / "a.zip", "w") as z:
        z.writestr("a.json", json.dumps(second))
    results = [ib.process_claimed(c, box, images, outbox, ckpt, fast_config(), heartbeat_s=0.05)
               for c in ib.claim_round(box, "run1").claims]
    (box / "a.json").write_text(json.dumps({**first, "annotations": first["annotations"][:2]}))  # changed
    results += [ib.process_claimed(c, box, images, outbox, ckpt, fast_config(), heartbeat_s=0.05)
                for c in ib.claim_round(box, "run2").claims]
    assert [r["status"] for r in results] == ["done"] * 3
    assert len({r["out_dir"] for r in results}) == 3
    for r, src in zip(results, (first, second, {"annotations": first["annotations"][:2]})):
        out = json.loads((Path(r["out_dir"]) / OUTPUT_JSON).read_text())
        assert [a["id"] for a in out["annotations"]] == [a["id"] for a in src["annotations"]]


def test_a_stem_of_dots_cannot_write_into_the_inbox(tmp_path):
    """Before: ``...json`` (stem ``..``) wrote its outputs into the inbox itself, looked for
    images one folder too high, and the next run claimed ``snapped.json`` as an input."""
    _, images, data = make_rough(tmp_path / "src")
    box = tmp_path / "inbox"
    box.mkdir()
    (box / "...json").write_text(json.dumps({**data, "annotations": data["annotations"][:3]}))
    (r,) = [ib.process_claimed(c, box, images, box / ib.OUTBOX, tiny_checkpoint(tmp_path / "ck"), fast_config(),
                               heartbeat_s=0.05) for c in ib.claim_round(box, "run1").claims]
    assert r["status"] == "done" and Path(r["out_dir"]).parent == box / ib.OUTBOX
    assert r["summary"]["reasons"].get("image_missing", 0) == 0  # the images were found
    assert sorted(p.name for p in box.iterdir() if p.is_file()) == []  # nothing new to claim
    assert ib.claim_round(box, "run2").claims == []


def test_a_zip_bomb_is_refused_and_leaves_nothing_unpacked(tmp_path):
    """Before: a 1 MB zip holding a 1 GiB member was unpacked in full and left behind."""
    images = make_images(tmp_path / "src")
    box = tmp_path / "inbox"
    box.mkdir()
    with zipfile.ZipFile(box / "bomb.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("a.json", b" " * (64 << 20))  # 64 MiB of spaces deflate ~1000x
    assert (box / "bomb.zip").stat().st_size < (1 << 20)
    (c,) = ib.claim_round(box, "run1").claims
    r = ib.process_claimed(c, box, images, tmp_path / "outbox", tiny_checkpoint(tmp_path / "ck"), fast_config(),
                           heartbeat_s=0.05)
    assert r["status"] == "failed" and "a zip bomb?" in r["error"]
    assert not list((tmp_path / "outbox").rglob("a.json"))
