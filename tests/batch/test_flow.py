"""Flows batch-snap and snap-inbox under a throwaway Prefect server, with a tiny model."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from snapper import batch as B
from snapper.config import BatchConfig
from snapper.overrides import from_dict
from tests.batchdata import EXPECTED, make_rough

FAST = {"workers": 0, "snap": {"batch_size": 8, "device": "cpu", "guard": False}}  # untrained tiny model: raw boxes


@pytest.fixture(scope="module")
def harness(prefect_server):
    """The session's Prefect server (tests/conftest.py)."""
    yield


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """Relative flow paths and the MLflow store live in the test's folder."""
    monkeypatch.setenv("SNAPPER_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _artifacts(key_prefix: str) -> list:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [a for a in client.read_artifacts() if (a.key or "").startswith(key_prefix)]


@pytest.mark.slow
def test_batch_snap_flow_accounts_resumes_and_tracks(harness, ckpt, home):
    from flows.batch_snap import batch_snap_flow

    ann, images, data = make_rough(home / "in")
    res = batch_snap_flow(str(ann), str(images), "out", model=str(ckpt), chunk_images=2, overrides=FAST, track=True)
    r = res["rough"]
    out = json.loads(Path(r["annotations"]).read_text())
    got = {a["id"]: (a["snapper"]["status"], a["snapper"]["reason"]) for a in out["annotations"]}
    assert [a["id"] for a in out["annotations"]] == [a["id"] for a in data["annotations"]] and got == EXPECTED
    assert r["summary"]["n_chunks"] == 4 and Path(r["annotations"]).parent == home / "out"

    # the same as the in-process library run
    clean = B.batch_snap(ann, images, home / "clean", ckpt, from_dict(BatchConfig, {"chunk_images": 2, **FAST}))
    assert Path(r["annotations"]).read_text() == clean.annotations.read_text()

    keys = {a.key for a in _artifacts("batch-snap-rough")}
    assert {"batch-snap-rough-counts", "batch-snap-rough-review", "batch-snap-rough-summary"} <= keys
    counts = next(a for a in _artifacts("batch-snap-rough-counts"))
    rows = json.loads(counts.data) if isinstance(counts.data, str) else counts.data
    assert sum(x["annotations"] for x in rows if x["status"] in ("snapped", "kept")) == len(EXPECTED)

    import mlflow

    from snapper.mlops import tracking

    tracking.configure()
    run = mlflow.MlflowClient().get_run(r["mlflow_run_id"])
    assert run.data.metrics["n_annotations"] == len(EXPECTED)
    assert run.data.metrics["kept/non_finite"] == 4
    assert run.data.params["batch.chunk_images"] == "2"

    # re-run: every chunk is reused (same files, untouched)
    chunks = sorted((home / "out" / "chunks").glob("chunk-*.parquet"))
    before = {c: c.stat().st_mtime_ns for c in chunks}
    res2 = batch_snap_flow(str(ann), str(images), "out", model=str(ckpt), chunk_images=2, overrides=FAST,
                           track=False, artifacts=False)
    assert {c: c.stat().st_mtime_ns for c in chunks} == before
    assert sorted((home / "out" / "chunks").glob("chunk-*.parquet")) == chunks
    assert Path(res2["rough"]["annotations"]).read_text() == clean.annotations.read_text()


def _inbox(home: Path) -> tuple[Path, Path, dict]:
    """inbox/ with a good file, one whose image is missing, and a malformed one."""
    ann, images, data = make_rough(home / "src")
    inbox = home / "inbox"
    inbox.mkdir()
    good = {**data, "annotations": [a for a in data["annotations"] if a.get("image_id") in (1, 2)]}
    (inbox / "good.json").write_text(json.dumps(good))
    missing = {**data, "annotations": [a for a in data["annotations"] if a.get("image_id") in (1, 3)]}
    (inbox / "missing_image.json").write_text(json.dumps(missing))
    (inbox / "broken.json").write_text('{"images": [], "annotations": [')
    (inbox / "notes.txt").write_text("not a rough file")
    return inbox, images, data


def test_snap_inbox_done_failed_and_outbox(harness, ckpt, home):
    from flows.batch_snap import snap_inbox

    inbox, images, _ = _inbox(home)
    res = snap_inbox(str(inbox), str(images), model=str(ckpt), overrides=FAST, min_age_s=0)
    assert (res["claimed"], res["done"], res["failed"]) == (3, 2, 1)
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["good.json", "missing_image.json"]
    assert sorted(p.name for p in (inbox / "failed").iterdir()) == ["broken.error.txt", "broken.json"]
    err = (inbox / "failed" / "broken.error.txt").read_text()
    assert "broken.json" in err and "not valid JSON" in err
    assert not list((inbox / "processing").iterdir()) and (inbox / "notes.txt").exists()
    assert not list(inbox.glob("*.json"))
    for stem in ("good", "missing_image"):
        assert (inbox / "outbox" / stem / B.OUTPUT_JSON).is_file()
    t = pd.read_parquet(inbox / "outbox" / "missing_image" / B.BOXES_PARQUET)
    assert (t.loc[t["image_id"] == 3, "reason"] == "image_missing").all() and (t["image_id"] == 3).sum() == 1
    good = json.loads((inbox / "outbox" / "good" / B.OUTPUT_JSON).read_text())
    assert len(good["annotations"]) == sum(1 for a in json.loads((inbox / "done" / "good.json").read_text())["annotations"])
    assert any(a.key == "snap-inbox-inbox" for a in _artifacts("snap-inbox"))
    # nothing new: the next scheduled run claims nothing
    again = snap_inbox(str(inbox), str(images), model=str(ckpt), overrides=FAST, min_age_s=0)
    assert again["claimed"] == 0
    # a file that is still being written (too young) waits for a later run
    (inbox / "late.json").write_text((inbox / "done" / "good.json").read_text())
    assert snap_inbox(str(inbox), str(images), model=str(ckpt), overrides=FAST, min_age_s=3600)["claimed"] == 0
    assert (inbox / "late.json").exists()
    (inbox / "late.json").unlink()
    # the missing image arrives and the file is sent again: snapped against the image, not the old verdict
    (images / "missing.jpg").write_bytes((images / "a.jpg").read_bytes())
    (inbox / "missing_image.json").write_text((inbox / "done" / "missing_image.json").read_text())
    res = snap_inbox(str(inbox), str(images), model=str(ckpt), overrides=FAST, min_age_s=0, artifacts=False)
    assert (res["claimed"], res["done"]) == (1, 1)
    t = pd.read_parquet(inbox / "outbox" / "missing_image" / B.BOXES_PARQUET)
    assert t.loc[t["image_id"] == 3, "status"].tolist() == ["snapped"]


def test_two_concurrent_inbox_runs_process_each_file_once(harness, ckpt, home):
    from flows.batch_snap import snap_inbox

    _, images, data = make_rough(home / "src")
    inbox = home / "inbox"
    inbox.mkdir()
    small = {**data, "annotations": [a for a in data["annotations"] if a.get("image_id") == 1][:3]}
    for i in range(6):
        (inbox / f"batch{i}.json").write_text(json.dumps(small))
    results, errors = [], []

    def run() -> None:
        try:
            results.append(snap_inbox(str(inbox), str(images), model=str(ckpt), overrides=FAST, min_age_s=0,
                                      artifacts=False))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 2
    files = [f["file"] for r in results for f in r["files"]]
    assert sorted(files) == [f"batch{i}.json" for i in range(6)]  # each exactly once over both runs
    assert sorted(p.name for p in (inbox / "done").iterdir()) == [f"batch{i}.json" for i in range(6)]


def test_claims_of_stopped_runs_are_taken_over_then_given_up(harness, ckpt, home):
    """A killed run leaves its claim in processing/: the next run snaps it (attempt 2); a file
    whose claims were abandoned max_attempts times goes to failed/; live claims are left alone."""
    from flows.batch_snap import snap_inbox

    _, images, data = make_rough(home / "src")
    inbox = home / "inbox"
    proc = inbox / "processing"
    proc.mkdir(parents=True)
    small = json.dumps({**data, "annotations": [a for a in data["annotations"] if a.get("image_id") == 1][:3]})
    old = time.time() - 7200
    for name in ("killed.dead0001-1.json", "cursed.dead0002-3.json", "busy.live0003-1.json"):
        (proc / name).write_text(small)
    for name in ("killed.dead0001-1.json", "cursed.dead0002-3.json"):
        os.utime(proc / name, (old, old))
    res = snap_inbox(str(inbox), str(images), model=str(ckpt), overrides=FAST, min_age_s=0, stale_after_s=3600,
                     max_attempts=3, artifacts=False)
    assert (res["claimed"], res["reclaimed"], res["done"], res["failed"]) == (1, 1, 1, 1)
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["killed.json"]
    assert (inbox / "outbox" / "killed" / B.OUTPUT_JSON).is_file()
    assert sorted(p.name for p in (inbox / "failed").iterdir()) == ["cursed.error.txt", "cursed.json"]
    assert "abandoned after 3 attempt(s)" in (inbox / "failed" / "cursed.error.txt").read_text()
    assert [p.name for p in proc.iterdir()] == ["busy.live0003-1.json"]  # a live claim is not touched
    # the run it belongs to is alive and has nothing else: the next run stays idle
    assert snap_inbox(str(inbox), str(images), model=str(ckpt), overrides=FAST, min_age_s=0,
                      artifacts=False)["claimed"] == 0


@pytest.mark.slow
def test_batch_snap_flow_takes_a_ground_truth_manifest_and_writes_it_back(harness, ckpt, home):
    from flows.batch_snap import batch_snap_flow
    from tests.formats.data import gt_manifest, make_images

    images = make_images(home / "in")
    facts = gt_manifest(home / "in" / "output.manifest")
    res = batch_snap_flow(str(home / "in" / "output.manifest"), str(images), "gt-out", model=str(ckpt),
                          overrides=FAST, track=False, artifacts=False)
    (r,) = res.values()
    out = json.loads(Path(r["annotations"]).read_text())
    assert len(out["annotations"]) == facts["n_boxes"]  # every worker's box, once, with a status
    assert len(out["snapper_fused"]) == facts["n_objects"]
    written = [Path(p) for p in r["written_back"]]
    assert [p.name for p in written] == ["output.manifest"] and written[0].parent == home / "gt-out" / "snapped"
    lines = [json.loads(x) for x in written[0].read_text().splitlines()]
    assert len(lines) == len(facts["lines"]) and all("my-job-snapper" in x for x in lines)
