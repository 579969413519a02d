"""Second reliability round (issue 23), as a user meets each case through ``snapper
batch-snap``: every input annotation accounted for exactly once, one line and exit 2 for a
file that cannot be read at all."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from snapper import batch as B
from snapper.cli import main as cli

PRED = ["pred_x", "pred_y", "pred_w", "pred_h"]
ARGS = ["--workers", "0", "--device", "cpu", "--chunk-images", "4", "--no-guard"]  # untrained tiny model: raw boxes


def _coco(images: list[tuple[str, int, int]], boxes: dict[str, list[float]]) -> dict:
    ims = [{"id": i, "file_name": n, "width": w, "height": h} for i, (n, w, h) in enumerate(images, 1)]
    ids = {n: i for i, (n, _, _) in enumerate(images, 1)}
    anns = [{"id": 100 + k, "image_id": ids[n], "category_id": 1, "bbox": b, "iscrowd": 0}
            for k, (n, b) in enumerate(boxes.items())]
    return {"images": ims, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}


def _rows(out) -> pd.DataFrame:
    return pd.read_parquet(out / B.BOXES_PARQUET).set_index("annotation_id")


def test_a_16_bit_png_is_scaled_to_8_bits_not_snapped_blank(ckpt, tmp_path):
    """Before: PIL's convert clipped I;16 at 255, an almost blank image, box reported snapped."""
    from snapper.imageio import load_image

    arr = np.full((60, 80), 2000, np.uint16)
    arr[12:40, 15:55] = 50000
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(arr).save(images / "deep.png")
    assert Image.open(images / "deep.png").mode.startswith("I;16")
    loaded = load_image(images / "deep.png").tensor.numpy()
    assert loaded[0, 20, 30] == 255 and loaded[0, 5, 5] == 0  # the object stands out as in the file
    (tmp_path / "rough.json").write_text(json.dumps(_coco([("deep.png", 80, 60)], {"deep.png": [14, 11, 42, 30]})))
    assert cli(["batch-snap", str(tmp_path / "rough.json"), str(images), str(tmp_path / "out"),
                "--model", str(ckpt), *ARGS]) == 0
    assert _rows(tmp_path / "out").loc[100, "status"] == "snapped"


def test_images_over_any_pixel_budget_are_image_too_large(ckpt, tmp_path):
    """Before: refused by PIL's bomb guard from the header and counted image_corrupt."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (1, 1)).save(images / "small.png")
    data = bytearray((images / "small.png").read_bytes())
    data[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR width, height: a 30000x30000 header
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # with a valid checksum
    (images / "huge.png").write_bytes(bytes(data))
    coco = _coco([("huge.png", 30000, 30000)], {"huge.png": [10, 10, 300, 300]})
    del coco["images"][0]["width"], coco["images"][0]["height"]  # the size must come from the file
    (tmp_path / "rough.json").write_text(json.dumps(coco))
    assert cli(["batch-snap", str(tmp_path / "rough.json"), str(images), str(tmp_path / "out"),
                "--model", str(ckpt), *ARGS]) == 0
    row = _rows(tmp_path / "out").loc[100]
    assert (row["status"], row["reason"]) == ("kept", "image_too_large"), row["detail"]


def test_an_image_replaced_with_its_mtime_restored_is_snapped_again(rough, ckpt, tmp_path):
    """Before: size + mtime decided, so a same-size replacement with its mtime set back kept
    the old results ("all chunks reused")."""
    ann, images, _ = rough
    a, b = images / "a.jpg", images / "b.jpg"
    size = max(a.stat().st_size, b.stat().st_size) + 64
    for p in (a, b):  # bytes after a JPEG's end marker are ignored: same size, other picture
        p.write_bytes(p.read_bytes().ljust(size, b"\0"))
    out = tmp_path / "out"
    args = [str(ann), str(images), str(out), "--model", str(ckpt), *ARGS]
    assert cli(["batch-snap", *args]) == 0
    before = _rows(out).loc[1001, PRED].to_numpy(float)
    st = a.stat()
    shutil.copyfile(b, a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (a.stat().st_size, a.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert cli(["batch-snap", *args]) == 0
    fresh = tmp_path / "fresh"
    assert cli(["batch-snap", str(ann), str(images), str(fresh), "--model", str(ckpt), *ARGS]) == 0
    after = _rows(out).loc[1001, PRED].to_numpy(float)
    assert np.allclose(after, _rows(fresh).loc[1001, PRED].to_numpy(float))
    assert not np.allclose(after, before)


def test_json_nested_too_deeply_is_one_line(ckpt, tmp_path, capsys):
    """Before: a RecursionError traceback from format detection."""
    (tmp_path / "deep.json").write_text("[" * 200_000)
    (tmp_path / "images").mkdir()
    assert cli(["batch-snap", str(tmp_path / "deep.json"), str(tmp_path / "images"), str(tmp_path / "out"),
                "--model", str(ckpt), *ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "deep.json" in err[0] and "nested too deeply" in err[0]


def test_a_file_name_with_a_nul_byte_or_not_a_string_is_one_image_not_the_file(rough, ckpt, tmp_path):
    """Before: 'embedded null byte' failed the whole file; ``"file_name": 5`` a pyarrow
    traceback at merge, no output at all."""
    ann, images, data = rough
    data["images"] += [{"id": 50, "file_name": "a\0.jpg", "width": 80, "height": 60},
                       {"id": 51, "file_name": 5, "width": 80, "height": 60}]
    data["annotations"] += [{"id": 5001 + k, "image_id": i, "category_id": 1, "bbox": [14, 11, 41, 30], "iscrowd": 0}
                            for k, i in enumerate((50, 51), 9)]
    ann.write_text(json.dumps(data))
    assert cli(["batch-snap", str(ann), str(images), str(tmp_path / "out"), "--model", str(ckpt), *ARGS]) == 0
    rows = _rows(tmp_path / "out")
    assert len(rows) == len(data["annotations"])  # every annotation, once
    assert rows.loc[[5010, 5011], "reason"].tolist() == ["image_path_invalid"] * 2
    assert rows.loc[1001, "status"] == "snapped"


def test_one_bad_file_of_a_folder_never_stops_the_others(rough, ckpt, tmp_path, capsys):
    """Before: a folder a.json (good), b.json (truncated), c.json (good) exited 2 after a;
    c was never snapped."""
    ann, images, data = rough
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.json").write_text(ann.read_text())
    (folder / "b.json").write_text(ann.read_text()[:200])
    (folder / "c.json").write_text(json.dumps({**data, "annotations": data["annotations"][:4]}))
    out = tmp_path / "out"
    assert cli(["batch-snap", str(folder), str(images), str(out), "--model", str(ckpt), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "b.json" in err and "1 input file(s) not snapped" in err and "Traceback" not in err
    assert len(_rows(out / "a")) == len(data["annotations"]) and len(_rows(out / "c")) == 4


def test_one_truncated_xml_of_a_voc_folder_is_reported_and_the_rest_snapped(ckpt, tmp_path, capsys):
    """Before: 1 of 8 VOC files truncated meant exit 2 and 0 of 26 boxes snapped."""
    from snapper.formats import voc
    from tests.formats.data import base_coco, make_images

    images = make_images(tmp_path / "src")
    coco = base_coco()
    voc.write(coco, None, tmp_path / "voc")
    files = sorted((tmp_path / "voc").glob("*.xml"))
    assert len(files) >= 2
    broken = files[0].read_text()[:40]
    files[0].write_text(broken)
    out = tmp_path / "out"
    assert cli(["batch-snap", str(tmp_path / "voc"), str(images), str(out), "--model", str(ckpt), *ARGS]) == 2
    err = capsys.readouterr().err
    assert f"{files[0].name}: " in err and "not well-formed XML" in err and "Traceback" not in err
    rows = _rows(out)
    assert len(rows) == sum(1 for a in coco["annotations"] if a["image_id"] != _image_of(coco, files[0].stem))
    assert (out / "snapped" / files[0].name).read_text() == broken  # copied back as it was
    assert sorted(p.name for p in (out / "snapped").iterdir()) == sorted(p.name for p in files)
    assert json.loads((out / "format.json").read_text())["unreadable"][0]["file"] == files[0].name


def _image_of(coco: dict, stem: str) -> int:
    return next(im["id"] for im in coco["images"] if Path(im["file_name"]).stem == stem)


def test_a_link_out_of_the_images_folder_is_not_opened_unless_allowed(rough, ckpt, tmp_path, monkeypatch):
    """Before: a link in the images folder to a file outside it (``/etc/passwd``) was opened."""
    from snapper.batch import identity

    ann, images, data = rough
    secret = tmp_path / "outside.jpg"
    secret.write_bytes((images / "a.jpg").read_bytes())
    (images / "link.jpg").symlink_to(secret)
    (images / "inner.jpg").symlink_to(images / "b.jpg")  # a link inside the folder is fine
    data["images"] += [{"id": 60, "file_name": "link.jpg", "width": 80, "height": 60},
                       {"id": 61, "file_name": "inner.jpg", "width": 80, "height": 60}]
    data["annotations"] += [{"id": 6000 + i, "image_id": i, "category_id": 1, "bbox": [14, 11, 41, 30], "iscrowd": 0}
                            for i in (60, 61)]
    ann.write_text(json.dumps(data))
    opened = []
    real = identity.sha256_file
    monkeypatch.setattr(identity, "sha256_file", lambda p: opened.append(os.path.realpath(p)) or real(p))
    assert cli(["batch-snap", str(ann), str(images), str(tmp_path / "out"), "--model", str(ckpt), *ARGS]) == 0
    rows = _rows(tmp_path / "out")
    assert len(rows) == len(data["annotations"])
    assert (rows.loc[6060, "reason"], rows.loc[6061, "status"]) == ("outside_images_dir", "snapped")
    assert str(secret) not in opened
    assert cli(["batch-snap", str(ann), str(images), str(tmp_path / "out2"), "--model", str(ckpt), *ARGS,
                "--follow-links"]) == 0
    assert _rows(tmp_path / "out2").loc[6060, "status"] == "snapped"


def test_a_huge_box_is_clipped_and_snapped_in_bounded_memory(rough, ckpt, tmp_path):
    """The same box that took 21 GiB in ``snapper snap``: batch-snap clips it to the image."""
    import resource

    ann, images, data = rough
    data["annotations"].append({"id": 8001, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1e9, 1e9], "iscrowd": 0})
    ann.write_text(json.dumps(data))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert cli(["batch-snap", str(ann), str(images), str(tmp_path / "out"), "--model", str(ckpt), *ARGS]) == 0
    row = _rows(tmp_path / "out").loc[8001]
    assert row["status"] == "snapped" and row["pred_x"] + row["pred_w"] <= 80 + 1e-6
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1 << 20  # KiB: under 1 GiB more
