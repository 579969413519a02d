"""``snapper batch-snap`` on Ground Truth, VOC, YOLO and CVAT inputs: converted, snapped by the
COCO batch path (every box accounted for), written back in the input's format. The model is
untrained: these tests check the plumbing, not the boxes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from snapper import batch as B
from snapper.cli import main as cli
from snapper.formats import batch_snap_any, voc, yolo
from snapper.formats.pipeline import FORMAT_JSON, INPUT_COCO, SNAPPED_DIR, BatchPlan, finish_job, plan_batch, snap_job
from tests.batchdata import assert_accounted, fast_config, tiny_checkpoint
from tests.formats.data import CVAT, base_coco, gt_manifest, make_images, voc_object, voc_xml


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")


def _args(ckpt: Path) -> list[str]:
    return ["--model", str(ckpt), "--chunk-images", "2", "--workers", "0", "--device", "cpu", "--batch-size", "8",
            "--no-guard"]  # an untrained tiny model: its raw boxes, not the broken-box guard's


def test_ground_truth_five_workers_per_object(tmp_path, ckpt, capsys):
    images = make_images(tmp_path)
    manifest = tmp_path / "job.manifest"
    facts = gt_manifest(manifest, attr="my-job", workers=5)
    out = tmp_path / "out"
    assert cli(["batch-snap", str(manifest), str(images), str(out), *_args(ckpt)]) == 0
    assert "groundtruth written back" in capsys.readouterr().out
    rough = json.loads((out / INPUT_COCO).read_text())
    snap = assert_accounted(out / B.OUTPUT_JSON, rough)  # every worker box exactly once, with a status
    assert len(snap) == facts["n_boxes"] == 20
    assert all(s["status"] in ("snapped", "kept") for s in snap.values())
    fused = json.loads((out / B.OUTPUT_JSON).read_text())["snapper_fused"]
    assert len(fused) == facts["n_objects"]  # one fused box per object
    assert sorted(len(f["annotation_ids"]) for f in fused) == [3, 5, 5, 5]
    lines = [json.loads(x) for x in (out / SNAPPED_DIR / "job.manifest").read_text().splitlines()]
    assert len(lines) == 4
    first = lines[0]
    assert len(first["my-job"]["annotations"]) == 2 and first["my-job"]["image_size"][0]["width"] == 80
    extra = first["my-job-snapper"]
    assert len(extra["workers"]) == 10 and extra["input"] == facts["lines"][0]["my-job"]  # nothing lost
    assert {w["worker_id"] for w in extra["workers"]} == {f"private.w{k}" for k in range(5)}
    for o in extra["objects"]:
        assert o["n_workers"] == 5 and 0.5 <= o["agreement_iou"] <= 1 and len(o["bbox"]) == 4
    assert all(w["change_px"] is not None for w in extra["workers"] if w["status"] == "snapped")
    assert len(lines[2]["my-job"]["annotations"]) == 1 and lines[2]["my-job-metadata"]["job-name"] == "j"
    plain = lines[3]["my-job-snapper"]["annotations"]
    assert [a["reason"] for a in plain] == [None, "outside_image"]
    assert lines[3]["my-job"]["annotations"][1] == facts["lines"][3]["my-job"]["annotations"][1]  # kept as is
    workers = sum(len(x["my-job-snapper"].get("workers", [])) + len(x["my-job-snapper"].get("annotations", []))
                  for x in lines)
    assert workers == facts["n_boxes"]  # every input box is in the written-back manifest too
    report = json.loads((out / FORMAT_JSON).read_text())
    assert report["n_objects"] == 4 and report["agreement_iou"]["n"] == 4 and report["label_attribute"] == "my-job"
    # a re-run converts to the same bytes and reuses every chunk
    assert cli(["batch-snap", str(manifest), str(images), str(out), *_args(ckpt)]) == 0
    assert "all 2 chunk(s) reused" in capsys.readouterr().out


def test_voc_yolo_cvat_are_written_back_in_their_format(tmp_path, ckpt):
    images = make_images(tmp_path)
    coco = base_coco()
    voc.write(coco, None, tmp_path / "voc")
    yolo.write(coco, None, tmp_path / "yolo")
    (tmp_path / "cvat.xml").write_text(CVAT)
    (tmp_path / "voc" / "gone.xml").write_text(voc_xml("gone.jpg", (80, 60), voc_object("car", (2, 2, 30, 30))))
    cfg = fast_config()
    r = batch_snap_any(tmp_path / "voc", images, tmp_path / "o_voc", ckpt, cfg)
    assert r.format == "voc" and sorted(p.name for p in r.written) == ["a.xml", "b.xml", "c.xml", "gone.xml"]
    text = (tmp_path / "o_voc" / SNAPPED_DIR / "a.xml").read_text()
    assert text.count("<snapper>") == 2 and "<rough>" in text and "<change_px>" in text
    gone = (tmp_path / "o_voc" / SNAPPED_DIR / "gone.xml").read_text()
    assert "<reason>image_missing</reason>" in gone and "<xmin>2</xmin>" in gone  # kept, named, box unchanged
    r = batch_snap_any(tmp_path / "yolo", images, tmp_path / "o_yolo", ckpt, cfg, fmt="yolo")
    rows = list(csv.DictReader(open(tmp_path / "o_yolo" / SNAPPED_DIR / yolo.CSV_NAME)))
    assert [(x["file"], x["line"]) for x in rows] == [("a.txt", "1"), ("a.txt", "2"), ("b.txt", "1")]
    assert (tmp_path / "o_yolo" / SNAPPED_DIR / "classes.txt").read_text() == "car\nperson\n"
    r = batch_snap_any(tmp_path / "cvat.xml", images, tmp_path / "o_cvat", ckpt, cfg)
    snap = assert_accounted(r.batch.annotations, json.loads((tmp_path / "o_cvat" / INPUT_COCO).read_text()))
    assert snap[2]["reason"] == "outside_image"
    out = (tmp_path / "o_cvat" / SNAPPED_DIR / "cvat.xml").read_text()
    assert out.count("snapper_status=") == 3 and 'snapper_reason="outside_image"' in out and "<polygon" in out


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    images = make_images(tmp_path)
    manifest = tmp_path / "job.manifest"
    gt_manifest(manifest)
    text = manifest.read_text().splitlines()
    manifest.write_text("\n".join([text[0], "{not json", *text[2:]]) + "\n")
    out = tmp_path / "out"
    assert cli(["batch-snap", str(manifest), str(images), str(out), "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "job.manifest: line 2: not valid JSON" in err[0]
    d = tmp_path / "voc"
    voc.write(base_coco(), None, d)
    assert cli(["batch-snap", str(d), str(images), str(out), "--label-attribute", "x",
                "--model", str(tmp_path / "none")]) == 2
    assert "--label-attribute is for Ground Truth" in capsys.readouterr().err
    assert cli(["batch-snap", str(d), str(images), str(out), "--format", "cvat",
                "--model", str(tmp_path / "none")]) == 2
    assert "CVAT for images is one XML file" in capsys.readouterr().err
    assert not out.exists()


def test_one_plan_for_the_cli_and_the_flow(tmp_path, ckpt):
    """plan_batch checks and prepares a job once; snap_job (in process, the CLI) and the flow's
    path (chunks elsewhere, then finish_job) give the same outputs, written back alike."""
    images = make_images(tmp_path)
    voc.write(base_coco(), None, tmp_path / "voc")
    cfg = fast_config()
    plan = plan_batch(tmp_path / "voc", images, tmp_path / "a", ckpt, cfg)
    assert plan.format == "voc" and plan.checkpoint == str(ckpt) and plan.report["n_boxes"] == 3
    (job,) = plan.jobs
    assert job.rough == str(tmp_path / "a" / INPUT_COCO) and job.out_dir == str(tmp_path / "a") and job.name == "voc"
    assert BatchPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan  # JSON between a flow's tasks
    in_process = snap_job(plan, job, cfg)
    other = plan_batch(tmp_path / "voc", images, tmp_path / "b", ckpt, cfg)
    (ojob,) = other.jobs
    done = [B.run_chunk(c, other.checkpoint, ojob.out_dir, cfg).to_dict()
            for c in B.plan_chunks(ojob.rough, other.images_dir, cfg.chunk_images)]
    flowed = finish_job(other, ojob, done, cfg, 1.0)
    assert flowed.batch.annotations.read_text() == in_process.batch.annotations.read_text()
    assert [p.name for p in flowed.written] == [p.name for p in in_process.written]
    for r in (in_process, flowed):
        assert json.loads((r.batch.out_dir / FORMAT_JSON).read_text())["n_boxes"] == 3


def test_the_plan_gives_each_coco_file_its_folder_and_refuses_what_does_not_fit(tmp_path, ckpt):
    images = make_images(tmp_path)
    folder = tmp_path / "coco"
    folder.mkdir()
    for name in ("x", "y"):
        (folder / f"{name}.json").write_text(json.dumps(base_coco()))
    plan = plan_batch(folder, images, tmp_path / "o", ckpt)
    assert plan.format == "coco" and [(j.name, j.out_dir) for j in plan.jobs] == [
        ("x", str(tmp_path / "o" / "x")), ("y", str(tmp_path / "o" / "y"))]
    with pytest.raises(B.BatchInputError, match="--truth needs a single rough file"):
        plan_batch(folder, images, tmp_path / "o", ckpt, truth=folder / "x.json")
    with pytest.raises(B.BatchInputError, match="--label-attribute is for Ground Truth"):
        plan_batch(folder, images, tmp_path / "o", ckpt, label_attribute="job")
    with pytest.raises(B.BatchInputError, match="a folder of 2 COCO files"):
        batch_snap_any(folder, images, tmp_path / "o", ckpt, fast_config())
    with pytest.raises(B.BatchInputError, match="images folder"):
        plan_batch(folder, tmp_path / "no-images", tmp_path / "o", ckpt)
