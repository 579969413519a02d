"""The synthetic dataset: exact tight boxes, determinism, idempotent atomic writes, COCO format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from snapper.cli.synth import main as synth_cli
from snapper.data import synthetic as S
from snapper.geometry import jitter_boxes, paired_iou, xywh_to_xyxy

SMALL = dict(num_images=6, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = S.generate(tmp_path / "a", **SMALL)
    b = S.generate(tmp_path / "b", **SMALL)
    c = S.generate(tmp_path / "c", num_images=6, seed=4)
    fa, fb = _files(a.parent), _files(b.parent)
    assert len(fa) == 7 and fa == fb
    assert _files(c.parent)["annotations.json"] != fa["annotations.json"]
    assert not list(tmp_path.glob(".*")), "temporary folders left behind"


@pytest.mark.parametrize("supersample", [1, 2])
def test_boxes_are_tight_boxes_of_the_rendered_masks(supersample: int) -> None:
    cfg = S.SynthConfig(seed=7, supersample=supersample)
    for index in range(6):
        sc = S.render_scene(cfg, index)
        s = sc.supersample
        owner = np.full((sc.height * s, sc.width * s), -1, dtype=np.int32)
        assert sc.objects, "a scene without objects"
        for k, obj in enumerate(sc.objects):
            ox, oy = obj.origin
            mh, mw = obj.mask.shape
            assert ox >= 0 and oy >= 0 and ox + mw <= sc.width * s and oy + mh <= sc.height * s
            region = owner[oy : oy + mh, ox : ox + mw]
            assert not (region[obj.mask] >= 0).any(), "visible masks overlap"
            region[obj.mask] = k
        for k, obj in enumerate(sc.objects):
            ys, xs = np.nonzero(owner == k)
            tight = (xs.min() / s, ys.min() / s, (xs.max() + 1 - xs.min()) / s, (ys.max() + 1 - ys.min()) / s)
            assert obj.box_xywh == pytest.approx(tight, abs=0), (index, k)
            assert obj.area == len(xs) / s**2
        # Objects change the picture only where a visible mask covers part of a pixel.
        covered = (owner >= 0).reshape(sc.height, s, sc.width, s).any(axis=(1, 3))
        changed = np.abs(sc.clean - sc.background).max(axis=2) > 1e-3
        assert not (changed & ~covered).any()
        # ... and (almost) every covered pixel does differ: the masks are what was drawn.
        assert changed[covered].mean() > 0.9


def test_annotation_file_is_valid_coco(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    ann_file = S.generate(tmp_path / "d", num_images=12, seed=1)
    data = json.loads(ann_file.read_text())
    coco = COCO(str(ann_file))
    assert len(coco.getImgIds()) == 12 and len(coco.getAnnIds()) == len(data["annotations"]) > 12
    ann_ids = [a["id"] for a in data["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids) and all(isinstance(i, int) for i in ann_ids)
    images = {im["id"]: im for im in data["images"]}
    assert len(images) == 12
    cats = {c["id"] for c in data["categories"]}
    from PIL import Image

    for im in data["images"]:
        with Image.open(ann_file.parent / "images" / im["file_name"]) as pil:
            assert pil.format == "JPEG" and pil.size == (im["width"], im["height"])
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        im = images[a["image_id"]]
        assert a["category_id"] in cats and a["iscrowd"] == 0
        assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
        assert w >= 4 and h >= 4 and 0 < a["area"] <= w * h
    # Annotations are exactly what the renderer reports for that image.
    cfg = S.SynthConfig(num_images=12, seed=1)
    first = [a["bbox"] for a in data["annotations"] if a["image_id"] == 1]
    assert first == [list(o.box_xywh) for o in S.render_scene(cfg, 0).objects]


def test_rerun_is_a_noop_and_changed_params_regenerate(tmp_path: Path) -> None:
    out = tmp_path / "d"
    ann = S.generate(out, **SMALL)
    img = out / "images" / "000000.jpg"
    before = (ann.stat().st_mtime_ns, img.stat().st_mtime_ns, ann.stat().st_ino)
    assert S.generate(out, **SMALL) == ann
    assert (ann.stat().st_mtime_ns, img.stat().st_mtime_ns, ann.stat().st_ino) == before
    S.generate(out, num_images=4, seed=3)
    data = json.loads(ann.read_text())
    assert len(data["images"]) == 4 and data["info"]["snapper_synthetic"]["num_images"] == 4
    assert not (out / "images" / "000005.jpg").exists()
    # A damaged dataset (an image missing) is rebuilt, not trusted.
    (out / "images" / "000001.jpg").unlink()
    S.generate(out, num_images=4, seed=3)
    assert (out / "images" / "000001.jpg").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "real"
    out.mkdir()
    (out / "annotations.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(FileExistsError, match="not a snapper synthetic dataset"):
        S.generate(out, num_images=2)
    assert (out / "annotations.json").read_text().startswith('{"images"')


def test_size_bucket_mix_and_jitter_is_clearly_wrong() -> None:
    cfg = S.SynthConfig(seed=11)
    areas, boxes, sizes = [], [], []
    for i in range(40):
        sc = S.render_scene(cfg, i)
        for o in sc.objects:
            areas.append(o.area)
            boxes.append(o.box_xywh)
            sizes.append((sc.width, sc.height))
    a = np.array(areas)
    frac = [(a < 32**2).mean(), ((a >= 32**2) & (a < 96**2)).mean(), (a >= 96**2).mean()]
    assert all(f > 0.12 for f in frac), frac
    assert frac[1] > 0.3
    true = xywh_to_xyxy(np.array(boxes))
    rng = np.random.default_rng(0)
    rough = np.concatenate([jitter_boxes(t[None], w, h, rng) for t, (w, h) in zip(true, sizes)])
    iou = paired_iou(rough, true)
    assert iou.mean() < 0.9 and (iou > 0.9).mean() < 0.3
    assert (np.abs(rough - true) < 1).mean() < 0.5


def test_border_cut_occlusion_and_thin_parts_present() -> None:
    cfg = S.SynthConfig(seed=5)
    border = occluded = thin = 0
    for i in range(30):
        sc = S.render_scene(cfg, i)
        for o in sc.objects:
            x, y, w, h = o.box_xywh
            border += x == 0 or y == 0 or x + w == sc.width or y + h == sc.height
            occluded += o.visible_fraction < 0.95
            thin += S.CATEGORIES[o.category_id - 1] in ("handle", "ring")
            assert o.visible_fraction >= cfg.min_visible_fraction
    assert border >= 10 and occluded >= 10 and thin >= 10


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="supersample"):
        S.SynthConfig(supersample=3)
    with pytest.raises(ValueError, match="jpeg"):
        S.SynthConfig(jpeg_min=90, jpeg_max=80)


# --------------------------------------------------------- snapper synth (snapper/cli/synth.py)


def test_cli_prints_one_line_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert synth_cli([str(out), "--num-images", "3", "--seed", "2", "--size", "200", "150",
                      "--scale-min", "1", "--scale-max", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "3 images" in line and "small" in line and "large" in line
    data = json.loads((out / "annotations.json").read_text())
    assert {(im["width"], im["height"]) for im in data["images"]} == {(200, 150)}
    assert synth_cli([str(tmp_path / "bad"), "--num-images", "1", "--seed", "-1"]) == 2
    assert "seed must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cli_set_overrides_any_field_checked_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "set"
    assert synth_cli([str(out), "--num-images", "2", "--set", "jpeg_min=90", "--set", "blur_prob=0"]) == 0
    info = json.loads((out / "annotations.json").read_text())["info"]["snapper_synthetic"]
    assert (info["jpeg_min"], info["blur_prob"], info["num_images"]) == (90, 0.0, 2)
    capsys.readouterr()
    for bad in ("num_images=abc", "colour=red"):  # not a field's type, not a field: a usage error
        with pytest.raises(SystemExit) as e:
            synth_cli([str(tmp_path / "never"), "--set", bad])
        assert e.value.code == 2 and bad.split("=")[0] in capsys.readouterr().err
    assert synth_cli([str(tmp_path / "never"), "--set", "jpeg_min=100"]) == 2  # SynthConfig's own check
    assert "jpeg_min <= jpeg_max" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
