"""``snapper batch-snap`` as a user runs it: single file, folder, one-line errors with exit
status 2, results keyed on the images' contents and the model, one bad number costing one
annotation, a pixel budget per image; every run checked against the accounting invariant."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from snapper import batch as B
from snapper import imageio
from snapper.cli import main as cli
from snapper.config import BatchConfig
from tests.batchdata import EXPECTED, assert_accounted, tiny_checkpoint


def test_cli_single_file_folder_and_errors(rough, ckpt, tmp_path, capsys):
    ann, images, data = rough
    args = ["--model", str(ckpt), "--chunk-images", "3", "--workers", "0", "--device", "cpu",
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
     (["--buffer-ratio", "-1"], "--buffer-ratio"), (["--review-threshold", "nan"], "--review-threshold"),
     (["--max-pixels", "0"], "--max-pixels"),
     (["--review-threshold", "1.5"], "--review-threshold"), (["--batch-size", "0"], "--batch-size"),
     (["--chunk-images", "x"], "--chunk-images"), (["--workers", "-1"], "--workers"),
     (["--set", "snap.batch_size=abc"], "batch_size"), (["--set", "no_such_field=1"], "no_such_field"),
     (["--set", "snap.buffer_ratio=-1"], "buffer_ratio"), (["--set", "snap.precision=fp8"], "precision"),
     (["--device", "banana"], "--device"), (["--set", "snap.device=banana"], "snap.device"),
     (["--set", "snap.passes=3"], "snap.passes"), (["--set", "review_threshold=2"], "review_threshold"),
     (["--set", "buffer_ratio=1.5"], "buffer_ratio")],  # a read-out setting lives in the snap section
)
def test_bad_options_exit_2_before_any_work(rough, tmp_path, capsys, opts, match):
    ann, images, _ = rough
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli(["batch-snap", str(ann), str(images), str(out), "--model", str(tmp_path / "no-model"), *opts])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[-1] and "Traceback" not in "".join(err)
    assert not out.exists()  # nothing was written


def test_set_and_named_options_reach_the_config(rough, ckpt, tmp_path):
    ann, images, _ = rough
    args = ["--model", str(ckpt), "--workers", "0", "--device", "cpu", "--set", "review_moved_frac=0.5",
            "--set", "chunk_images=5", "--chunk-images", "4", "--set", "fuse_key=null", "--buffer-ratio", "1.25"]
    assert cli(["batch-snap", str(ann), str(images), str(tmp_path / "o"), *args]) == 0
    c = json.loads((tmp_path / "o" / B.SUMMARY_JSON).read_text())["config"]
    assert (c["review_moved_frac"], c["chunk_images"], c["fuse_key"], c["snap"]["buffer_ratio"]) == (0.5, 4, None, 1.25)
    assert c["snap"]["batch_size"] == BatchConfig().snap.batch_size  # defaults come from BatchConfig


def test_truth_with_a_folder_is_refused(rough, tmp_path, capsys):
    ann, images, _ = rough
    assert cli(["batch-snap", str(ann.parent), str(images), str(tmp_path / "o"), "--truth", str(ann)]) == 2
    assert "--truth needs a single rough file" in capsys.readouterr().err


# ------------------------------------------------------------------ results keyed on content

def _args(ckpt) -> list[str]:
    return ["--model", str(ckpt), "--chunk-images", "2", "--workers", "0", "--device", "cpu", "--batch-size", "4",
            "--no-guard"]  # an untrained tiny model: its raw boxes, not the broken-box guard's


def _chunks(out) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / B.CHUNKS_DIR).glob("chunk-*.parquet")}


def _summary(out) -> dict:
    return json.loads((out / B.SUMMARY_JSON).read_text())


def test_a_replaced_image_resnaps_exactly_its_chunk(rough, ckpt, tmp_path, capsys, monkeypatch):
    ann, images, data = rough
    out = tmp_path / "out"
    assert cli(["batch-snap", str(ann), str(images), str(out), *_args(ckpt)]) == 0
    assert assert_accounted(out / B.OUTPUT_JSON, data)[4001]["reason"] == "image_corrupt"
    before = _chunks(out)
    assert len(before) == 4  # images (1, 2), (3, 4), (5, 6), (7)
    shutil.copy(images / "b.jpg", images / "corrupt.jpg")  # the broken file replaced by a good one
    assert cli(["batch-snap", str(ann), str(images), str(out), *_args(ckpt)]) == 0
    snapped = assert_accounted(out / B.OUTPUT_JSON, data)
    assert snapped[4001]["status"] == "snapped" and snapped[3001]["reason"] == "image_missing"
    after = _chunks(out)
    new = sorted(set(after) - set(before))
    assert len(new) == 1 and new[0].startswith("chunk-00001-")  # only the chunk holding image 4
    assert all(after[n] == t for n, t in before.items())  # the others untouched
    s = _summary(out)
    assert (s["n_chunks"], s["n_chunks_reused"], s["n_annotations_snapped_now"]) == (4, 3, 2)
    assert "3 of 4 chunks reused" in capsys.readouterr().out
    # a plain re-run reads no image again (sizes and mtimes match the cache) and snaps nothing
    hashed = []
    monkeypatch.setattr("snapper.batch.identity.sha256_file", lambda p: hashed.append(p) or "x")
    assert cli(["batch-snap", str(ann), str(images), str(out), *_args(ckpt)]) == 0
    assert not hashed and _chunks(out) == after
    s = _summary(out)
    assert s["n_chunks_reused"] == 4 and s["annotations_per_s"] is None  # no claim of work not done now
    assert "all 4 chunk(s) reused" in capsys.readouterr().out
    assert {oct(p.stat().st_mode & 0o777) for p in [*(out / B.CHUNKS_DIR).iterdir(), *out.iterdir()]
            if p.is_file()} == {"0o644"}


def test_a_changed_model_resnaps_everything(rough, ckpt, tmp_path):
    ann, images, data = rough
    model, out = tmp_path / "model", tmp_path / "out"
    shutil.copytree(ckpt, model)
    assert cli(["batch-snap", str(ann), str(images), str(out), *_args(model)]) == 0
    first = pd.read_parquet(out / B.BOXES_PARQUET)
    tiny_checkpoint(model, seed=1)  # retrained into the same folder
    assert cli(["batch-snap", str(ann), str(images), str(out), *_args(model)]) == 0
    assert_accounted(out / B.OUTPUT_JSON, data)
    s = _summary(out)
    assert s["n_chunks_reused"] == 0 and s["n_annotations_snapped_now"] == sum(1 for a in data["annotations"]
                                                                               if a.get("image_id") in range(1, 8))
    second = pd.read_parquet(out / B.BOXES_PARQUET)
    assert not np.allclose(first[B.CONF_COLS].fillna(0), second[B.CONF_COLS].fillna(0))


def test_an_empty_or_torn_chunk_result_is_snapped_again(rough, ckpt, tmp_path):
    ann, images, data = rough
    out = tmp_path / "out"
    assert cli(["batch-snap", str(ann), str(images), str(out), *_args(ckpt)]) == 0
    good = (out / B.OUTPUT_JSON).read_text()
    first, second = sorted((out / B.CHUNKS_DIR).glob("chunk-*.parquet"))[:2]
    first.write_bytes(b"")  # e.g. a full disk, or a copy that stopped
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 2])
    assert cli(["batch-snap", str(ann), str(images), str(out), *_args(ckpt)]) == 0
    assert _summary(out)["n_chunks_reused"] == 2 and first.stat().st_size > 0
    assert (out / B.OUTPUT_JSON).read_text() == good
    assert_accounted(out / B.OUTPUT_JSON, data)


# ------------------------------------------------------------ one bad number, one annotation

def test_one_oversized_number_is_one_kept_annotation(rough, ckpt, tmp_path, capsys):
    ann, images, data = rough
    data["annotations"][0]["bbox"] = [10**400, 0, 10, 10]  # an integer JSON allows, no float holds
    data["annotations"][10]["bbox"] = [-10, -5, 123456.5, 30]  # becomes 1e400 below: json reads inf
    data["images"].append({"id": 2**63, "file_name": "a.jpg", "width": 80, "height": 60})
    data["annotations"].append({"id": 8001, "image_id": 2**63, "category_id": 1, "bbox": [14, 11, 41, 30]})
    text = json.dumps(data).replace("123456.5", "1e400")
    ann.write_text(text)
    data = json.loads(text)
    out = tmp_path / "out"
    assert cli(["batch-snap", str(ann), str(images), str(out), *_args(ckpt)]) == 0
    snap = assert_accounted(out / B.OUTPUT_JSON, data)
    assert (snap[1001]["reason"], snap[1011]["reason"], snap[8001]["reason"]) == (
        "out_of_range", "non_finite", "unknown_image")
    assert "64-bit" in snap[8001]["detail"]
    unchanged = {k: v for k, v in EXPECTED.items() if k not in (1001, 1011)}
    assert {k: (snap[k]["status"], snap[k]["reason"]) for k in unchanged} == unchanged
    # an annotation id that cannot be represented: the file is refused, naming it, nothing written
    data["annotations"][3]["id"] = 2**64
    ann.write_text(json.dumps(data))
    assert cli(["batch-snap", str(ann), str(images), str(tmp_path / "o2"), *_args(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "annotations[3]" in err[0] and "64-bit" in err[0]
    assert not (tmp_path / "o2").exists()


# ------------------------------------------------------------------ pixel budget per image

def test_images_over_the_pixel_budget_are_kept_without_decoding(rough, ckpt, tmp_path, monkeypatch):
    ann, images, data = rough
    big = np.full((300, 400, 3), 30, np.uint8)
    big[40:260, 50:350] = 200
    Image.fromarray(big).save(images / "big.png")
    Image.fromarray(big).save(images / "big.jpg", quality=95)
    Image.new("1", (10000, 10000)).save(images / "bomb.png")  # 12 KB, 100 MP: over the default budget
    for i, name, w, h in ((10, "big.png", 400, 300), (11, "big.jpg", 400, 300), (12, "bomb.png", 10000, 10000)):
        data["images"].append({"id": i, "file_name": name, "width": w, "height": h})
        data["annotations"].append({"id": i * 1000 + 1, "image_id": i, "category_id": 1, "bbox": [52, 41, 296, 218]})
    ann.write_text(json.dumps(data))
    decoded = []

    def spy(real):
        def decode(*a):
            t = real(*a)
            decoded.append(tuple(t.shape))  # (3, h, w)
            return t
        return decode

    for fn in ("_decode_pil", "_decode_jpeg_full"):
        monkeypatch.setattr(imageio, fn, spy(getattr(imageio, fn)))
    out = tmp_path / "out"
    assert cli(["batch-snap", str(ann), str(images), str(out), *_args(ckpt), "--set", "max_pixels=100000"]) == 0
    snap = assert_accounted(out / B.OUTPUT_JSON, data)
    assert snap[10001]["reason"] == "image_too_large"
    assert "400x300" in snap[10001]["detail"] and "not decoded" in snap[10001]["detail"]
    assert snap[11001]["status"] == "snapped"  # the JPEG's crops allow a 1/8 draft decode: 50x38 px
    assert snap[12001]["reason"] == "image_too_large"
    assert max(s[1] * s[2] for s in decoded) <= 100_000  # nothing over the budget was ever decoded
    decoded.clear()
    out2 = tmp_path / "out2"  # the default budget (64 MP) lets the 400x300 images through, not the 100 MP one
    assert cli(["batch-snap", str(ann), str(images), str(out2), *_args(ckpt)]) == 0
    snap = assert_accounted(out2 / B.OUTPUT_JSON, data)
    assert (snap[10001]["status"], snap[11001]["status"], snap[12001]["reason"]) == ("snapped", "snapped",
                                                                                     "image_too_large")
    assert max(s[1] * s[2] for s in decoded) < 1e6


# -------------------------------------------------------------- paths refused before any work

def test_a_misspelled_images_folder_or_a_file_as_output_exits_2(rough, ckpt, tmp_path, capsys):
    ann, images, _ = rough
    out = tmp_path / "out"
    assert cli(["batch-snap", str(ann), str(images) + "s", str(out), *_args(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{images}s" in err[0] and "does not exist" in err[0]
    assert not out.exists()  # instead of every box kept as image_missing
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for target in (taken, taken / "sub"):
        assert cli(["batch-snap", str(ann), str(images), str(target), *_args(ckpt)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is a file, not a folder" in err[0]


def test_a_job_is_planned_once_and_a_plain_run_never_imports_mlflow(rough, ckpt, tmp_path):
    """Folders checked and the model resolved once per job (not again per file or chunk); and
    batch-snap on a checkpoint folder, without tracking, does not pay for MLflow (a fresh
    process: this session has imported it elsewhere)."""
    folder = tmp_path / "files"
    folder.mkdir()
    for name in ("one", "two"):
        (folder / f"{name}.json").write_text(rough[0].read_text())
    code = ("import json, sys; from snapper.formats import pipeline as P; from snapper.cli import main; calls = []\n"
            "def count(f):\n"
            "    def spy(*a, **k):\n"
            "        calls.append(f.__name__)\n"
            "        return f(*a, **k)\n"
            "    return spy\n"
            "P.resolve_model, P.check_folders = count(P.resolve_model), count(P.check_folders)\n"
            f"rc = main(['batch-snap', {str(folder)!r}, {str(rough[1])!r}, {str(tmp_path / 'out')!r}, '--model', "
            f"{str(ckpt)!r}, '--workers', '0', '--device', 'cpu', '--chunk-images', '2'])\n"
            "print(json.dumps({'rc': rc, 'calls': sorted(calls), 'mlflow': 'mlflow' in sys.modules}))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"rc": 0, "calls": ["check_folders", "resolve_model"], "mlflow": False}
    assert (tmp_path / "out" / "one" / B.OUTPUT_JSON).is_file() and (tmp_path / "out" / "two" / B.OUTPUT_JSON).is_file()
