"""Training/evaluation streams on tiny generated shards (and coco128-train when present)."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from snapper.config import DataConfig, JitterConfig, ModelConfig, TrainConfig
from snapper.data import stream
from snapper.data.stream import augment, decode_scale, eval_batches, train_loader
from snapper.geometry import paired_iou

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BG, FG, FG2 = 20, 230, 150


# --------------------------------------------------------------------------------- shard helpers


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def rect_image(w: int, h: int, rects: list[list[float]], two_tone: bool = False) -> np.ndarray:
    """Dark image with bright integer rectangles (xywh); two_tone makes the right half dimmer
    so that a mirrored crop can be recognised."""
    arr = np.full((h, w, 3), BG, np.uint8)
    for x, y, rw, rh in rects:
        x, y, rw, rh = int(x), int(y), int(rw), int(rh)
        arr[y : y + rh, x : x + rw] = FG
        if two_tone:
            arr[y : y + rh, x + rw // 2 : x + rw] = FG2
    return arr


def write_shards(root: Path, samples: list[dict], per_shard: int = 2) -> list[str]:
    """Shards in the project format: <key>.<ext> image bytes + <key>.json metadata.
    A sample is {"key", "ext", "image": bytes, "meta": dict or raw bytes}."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s0 in range(0, len(samples), per_shard):
        path = root / f"shard-{s0 // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tf:
            for s in samples[s0 : s0 + per_shard]:
                meta = s["meta"] if isinstance(s["meta"], bytes) else json.dumps(s["meta"]).encode()
                for name, data in ((f"{s['key']}.{s['ext']}", s["image"]), (f"{s['key']}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def rect_samples(n_images: int, boxes: int = 2, w: int = 96, h: int = 72, seed: int = 0,
                 fmt: str = "PNG", two_tone: bool = False, crowd_every: int = 0) -> list[dict]:
    """Images whose boxes are disjoint bright rectangles, far enough apart that a crop with
    context 1.4 never reaches a second one (one column band per box)."""
    rng = np.random.default_rng(seed)
    out, ann_id = [], 1000
    band = w // boxes
    for i in range(n_images):
        rects, anns = [], []
        for b in range(boxes):
            bw = int(rng.integers(band // 3, band // 2))
            bh = int(rng.integers(h // 4, h // 2))
            x = b * band + (band - bw) // 2
            y = int(rng.integers(h // 4, h - bh - h // 8))
            rects.append([x, y, bw, bh])
            crowd = int(crowd_every > 0 and ann_id % crowd_every == 0)
            anns.append({"id": ann_id, "bbox": [x, y, bw, bh], "category_id": 1 + b, "iscrowd": crowd,
                         "area": bw * bh})
            ann_id += 1
        ext = "jpg" if fmt == "JPEG" else "png"
        image_id = i + 1
        out.append({
            "key": f"{image_id:012d}", "ext": ext, "image": encode(rect_image(w, h, rects, two_tone), fmt),
            "meta": {"image_id": image_id, "file_name": f"{image_id:012d}.{ext}", "width": w, "height": h,
                     "annotations": anns},
        })
    return out


def cfg_for(urls: list[str], **data_kw) -> TrainConfig:
    data = dict(train_shards=urls, boxes_per_image=2, min_box_size=2.0, shuffle_buffer=8, workers=0,
                hflip=False, color_jitter=0.0, resampled=False)
    data.update(data_kw)
    return TrainConfig(model=ModelConfig(input_size=32, context=1.4), data=DataConfig(**data), batch_size=4)


def measured_edges(crop: torch.Tensor, thr: float = 90.0) -> np.ndarray | None:
    """(left, top, right, bottom) of the bright region of a uint8 (3,S,S) crop, in input px."""
    g = crop.float().mean(0).numpy()
    cols = np.flatnonzero(g.max(0) > thr)
    rows = np.flatnonzero(g.max(1) > thr)
    if len(cols) == 0 or len(rows) == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def all_batches(loader) -> list[dict]:
    return list(loader)


# --------------------------------------------------------------------------------------- tests


def test_expand_urls(tmp_path):
    paths = write_shards(tmp_path, rect_samples(4), per_shard=1)
    assert stream.expand_urls(str(tmp_path / "shard-{00000..00003}.tar")) == paths
    assert stream.expand_urls(str(tmp_path / "*.tar")) == paths
    assert stream.expand_urls(str(tmp_path)) == paths
    assert stream.expand_urls(["pipe:cat x.tar"]) == ["pipe:cat x.tar"]
    with pytest.raises(FileNotFoundError, match="shard-00009"):
        stream.expand_urls(str(tmp_path / "shard-00009.tar"))
    assert stream.count_images(paths) == 4


def write_coco_folder(root: Path, samples: list[dict]) -> Path:
    """The samples as a COCO folder (annotations.json + images/)."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for s in samples:
        (root / "images" / s["meta"]["file_name"]).write_bytes(s["image"])
        m = s["meta"]
        images.append({k: m[k] for k in ("file_name", "width", "height")} | {"id": m["image_id"]})
        anns += [a | {"image_id": m["image_id"]} for a in m["annotations"]]
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": f"c{i}"} for i in range(1, 5)]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def test_expand_urls_reads_shard_manifests(tmp_path):
    shards = pytest.importorskip("snapper.data.shards")
    samples = rect_samples(6, boxes=2)
    src = write_coco_folder(tmp_path / "coco", samples)
    out = tmp_path / "shards"
    shards.shard_dataset(src / "annotations.json", src / "images", out, shard_size=2)
    urls = stream.expand_urls(str(out))
    assert len(urls) == 3 and urls == stream.expand_urls(str(out / "train-manifest.json"))
    assert urls == shards.shard_urls(out)
    got = Counter(int(i) for b in train_loader(cfg_for([str(out)])) for i in b["image_id"])
    assert got == Counter({i + 1: 2 for i in range(6)})
    loader = train_loader(cfg_for([str(out / "train-manifest.json")], resampled=True))
    assert loader.batches_per_epoch == 3  # 6 images x 2 boxes / batch 4


def test_train_batches_shapes_and_targets(tmp_path):
    urls = write_shards(tmp_path, rect_samples(6, boxes=3), per_shard=2)
    cfg = cfg_for(urls, resampled=True, epoch_samples=20, hflip=True, color_jitter=0.2)
    loader = train_loader(cfg)
    batches = all_batches(loader)
    assert len(batches) == loader.batches_per_epoch == 5
    for b in batches:
        assert b["image"].dtype == torch.uint8 and b["image"].shape == (4, 3, 32, 32)
        assert b["target"].dtype == torch.float32 and b["target"].shape == (4, 4)
        assert (b["target"] >= 0).all() and (b["target"] <= 32).all()
        assert (b["target"][:, 2] > b["target"][:, 0]).all() and (b["target"][:, 3] > b["target"][:, 1]).all()
        assert b["annotation_id"].shape == (4,) and b["image_id"].shape == (4,)
    assert loader.stats.boxes >= 20 and loader.stats.n_skipped_images == 0
    # the next epoch is different but reproducible
    again = train_loader(cfg)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(batches, again))
    second = next(iter(loader))
    assert not torch.equal(second["image"], batches[0]["image"])


def test_resampled_epochs_with_persistent_workers(tmp_path):
    urls = write_shards(tmp_path, rect_samples(6, boxes=2), per_shard=2)
    cfg = cfg_for(urls, resampled=True, epoch_samples=24, workers=2)
    loader = train_loader(cfg)
    assert loader.batches_per_epoch == 6  # 24 crops / batch 4, 3 per worker
    epochs = [[b["annotation_id"].tolist() for b in loader] for _ in range(2)]
    assert [len(e) for e in epochs] == [6, 6] and epochs[0] != epochs[1]
    loader.set_epoch(0)  # a resumed run restarts the same reproducible stream
    assert [b["annotation_id"].tolist() for b in loader] == epochs[0]


def test_color_jitter_is_the_composed_affine_map():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 8, 8) * 255
    f = torch.empty(5, 3).uniform_(0.8, 1.2)
    b, c, s = (f[:, i].view(-1, 1, 1, 1) for i in range(3))
    y = x * b  # brightness, then saturation (blend with luma), then contrast (blend with mean luma)
    gray = (y * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    y = gray + (y - gray) * s
    y = gray.mean((2, 3), keepdim=True) + (y - gray.mean((2, 3), keepdim=True)) * c
    got, _ = augment(x.clone(), torch.zeros(5, 4), None, f)
    torch.testing.assert_close(got, y.clamp(0, 255), atol=1e-3, rtol=0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_crop_content_matches_target(tmp_path, fmt, monkeypatch):
    if fmt == "PNG":
        samples, size = rect_samples(4, boxes=2), 32
    else:  # large JPEG, small input: the crops are downscaled ~20x, so a draft decode is used
        samples, size = rect_samples(3, boxes=2, w=1600, h=1200, fmt="JPEG"), 32
    urls = write_shards(tmp_path, samples)
    cfg = cfg_for(urls)
    cfg.model.input_size = size
    scales = []
    real_load = stream.load_image

    def spy(*a, **kw):
        li = real_load(*a, **kw)
        scales.append(li.scale[0])
        return li

    monkeypatch.setattr(stream, "load_image", spy)
    n = 0
    for b in train_loader(cfg):
        for crop, t in zip(b["image"], b["target"]):
            m = measured_edges(crop)
            assert m is not None
            np.testing.assert_allclose(m, t.numpy(), atol=1.0)
            n += 1
    assert n == 2 * len(samples)
    if fmt == "JPEG":
        assert max(scales) <= 0.25  # decoded at 1/4 or 1/8 of full size
    else:
        assert min(scales) == 1.0


def test_hflip_keeps_crop_and_target_consistent(tmp_path):
    # unit level: a crop with a bright band at columns [5, 12)
    crop = torch.full((1, 3, 32, 32), float(BG))
    crop[:, :, 8:20, 5:12] = FG
    target = torch.tensor([[5.0, 8.0, 12.0, 20.0]])
    flipped, t = augment(crop, target, torch.tensor([True]))
    assert t.tolist() == [[20.0, 8.0, 27.0, 20.0]]
    np.testing.assert_allclose(measured_edges(flipped[0].to(torch.uint8)), t[0].numpy())
    same, t0 = augment(crop, target, torch.tensor([False]))
    assert torch.equal(same, crop) and torch.equal(t0, target)
    # pipeline level: every crop agrees with its target, and both orientations occur
    urls = write_shards(tmp_path, rect_samples(8, boxes=2, two_tone=True))
    orient = Counter()
    for b in train_loader(cfg_for(urls, hflip=True)):
        for crop, t in zip(b["image"], b["target"]):
            np.testing.assert_allclose(measured_edges(crop), t.numpy(), atol=1.0)
            x0, y0, x1, y1 = t.round().int().tolist()
            g = crop.float().mean(0)[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]
            half = g.shape[1] // 2
            orient["left_bright" if g[:, :half].mean() > g[:, -half:].mean() else "flipped"] += 1
    assert orient["left_bright"] > 0 and orient["flipped"] > 0


def test_rank_and_worker_split_covers_every_shard_once(tmp_path):
    samples = rect_samples(16, boxes=2)
    urls = write_shards(tmp_path, samples, per_shard=2)  # 8 shards for 2 ranks x 2 workers
    cfg = cfg_for(urls, workers=2)
    loaders = [train_loader(cfg, rank=r, world_size=2) for r in range(2)]
    for _epoch in range(2):
        per_rank = [Counter(int(i) for b in ld for i in b["image_id"]) for ld in loaders]
        assert not set(per_rank[0]) & set(per_rank[1])
        total = per_rank[0] + per_rank[1]
        assert total == Counter({i + 1: 2 for i in range(16)})  # each image once, both its boxes
        assert all(ld.stats.shard_errors == 0 for ld in loaders)


def test_too_few_shards_fails_fast(tmp_path):
    urls = write_shards(tmp_path, rect_samples(6), per_shard=2)  # 3 shards
    with pytest.raises(ValueError, match=r"3 shard\(s\) for 2 rank\(s\) x 2 worker\(s\)"):
        train_loader(cfg_for(urls, workers=2), rank=0, world_size=2)
    train_loader(cfg_for(urls, workers=2, resampled=True), rank=0, world_size=2)  # fine when resampled


def _eval_table(urls, workers=0, **kw) -> dict[int, dict]:
    rows = {}
    it = eval_batches(urls, ModelConfig(input_size=32), JitterConfig(), seed=3, batch_size=5, workers=workers, **kw)
    for b in it:
        assert b["image"].dtype == torch.uint8 and b["image"].shape[1:] == (3, 32, 32)
        for k in ("window", "rough", "true"):
            assert b[k].dtype == torch.float64 and b[k].shape[1] == 4
        for j, a in enumerate(b["annotation_id"].tolist()):
            assert a not in rows, f"annotation {a} delivered twice"
            rows[a] = {k: (v[j] if not isinstance(v, list) else v[j]) for k, v in b.items()}
    return rows, it.stats


def test_eval_stream_every_box_once_deterministic(tmp_path):
    samples = rect_samples(10, boxes=3, crowd_every=4)
    # one unusable (zero-width) box: counted, not delivered
    samples[0]["meta"]["annotations"].append({"id": 1, "bbox": [5, 5, 0, 4], "category_id": 1, "iscrowd": 0})
    urls = write_shards(tmp_path, samples, per_shard=3)  # 4 shards
    expected = {a["id"] for s in samples for a in s["meta"]["annotations"] if not a["iscrowd"]} - {1}
    n_crowd = sum(a["iscrowd"] for s in samples for a in s["meta"]["annotations"])
    assert n_crowd > 0
    rows, stats = _eval_table(urls)
    assert set(rows) == expected
    assert stats.excluded_boxes["crowd"] == n_crowd and stats.skipped_boxes["box_degenerate"] == 1
    rows2, _ = _eval_table(urls)
    rows_w, stats_w = _eval_table(urls, workers=2)
    assert set(rows_w) == expected and stats_w.boxes == stats.boxes == len(expected)
    for a in expected:
        for other in (rows2, rows_w):
            for k in ("image", "window", "rough", "true", "target", "image_id", "category_id"):
                assert torch.equal(rows[a][k], other[a][k]), (a, k)
    # rough boxes are jittered versions of the truth, and windows surround the rough boxes
    a = next(iter(expected))
    assert not torch.equal(rows[a]["rough"], rows[a]["true"])
    assert paired_iou(rows[a]["rough"].numpy(), rows[a]["true"].numpy())[0] > 0.5
    capped, _ = _eval_table(urls, max_boxes=7)
    assert len(capped) == 7


def test_corrupt_samples_counted_warned_skipped(tmp_path, caplog):
    samples = rect_samples(6, boxes=2)
    samples[1]["image"] = b"\xff\xd8\xff\xe0 this is not a jpeg" * 3
    samples[1]["ext"] = "jpg"
    samples[3]["meta"] = b"{not json"
    urls = write_shards(tmp_path, samples, per_shard=2)
    good_ids = {1, 3, 5, 6}
    with caplog.at_level(logging.WARNING, logger="snapper.data.stream"):
        loader = train_loader(cfg_for(urls))
        got = Counter(int(i) for b in loader for i in b["image_id"])
    assert set(got) == good_ids and all(v == 2 for v in got.values())
    assert loader.stats.skipped_images == Counter({"corrupt_image": 1, "bad_json": 1})
    assert loader.stats.skipped_boxes["corrupt_image"] == 2
    assert "corrupt_image" in caplog.text and "bad_json" in caplog.text and "000000000002" in caplog.text
    rows, stats = _eval_table(urls)
    assert {int(r["image_id"]) for r in rows.values()} == good_ids
    assert stats.skipped_images == Counter({"corrupt_image": 1, "bad_json": 1})


def test_truncated_shard_is_counted(tmp_path):
    urls = write_shards(tmp_path, rect_samples(4, boxes=1), per_shard=2)
    data = Path(urls[1]).read_bytes()
    Path(urls[1]).write_bytes(data[: len(data) // 3])
    rows, stats = _eval_table(urls)
    assert {int(r["image_id"]) for r in rows.values()} >= {1, 2}
    assert stats.shard_errors + stats.n_skipped_images >= 1


def test_device_crop_mode(tmp_path):
    urls = write_shards(tmp_path, rect_samples(4, boxes=2))
    loader = train_loader(cfg_for(urls, crop_on="device", hflip=True))
    n = 0
    for raw in loader:
        assert "images" in raw and raw["images"][0]["image"].dtype == torch.uint8
        b = loader.to_device(raw, "cpu")
        assert b["image"].dtype == torch.uint8 and b["image"].shape[1:] == (3, 32, 32)
        for crop, t in zip(b["image"], b["target"]):
            np.testing.assert_allclose(measured_edges(crop), t.numpy(), atol=1.0)
            n += 1
    assert n == 8


def test_decode_scale():
    assert decode_scale(np.array([[0, 0, 320, 320], [0, 0, 64, 256]]), 32) == 0.5
    assert decode_scale(np.array([[0, 0, 10, 10]]), 32) == 1.0


# -------------------------------------------------------------------------- real data (optional)


def coco_to_shards(data_dir: Path, out: Path, per_shard: int = 32) -> list[str]:
    """Shard a COCO folder (snapper.data.shards.shard_dataset when it exists)."""
    try:
        from snapper.data.shards import shard_dataset  # type: ignore[attr-defined]
    except ImportError:
        shard_dataset = None
    if shard_dataset is not None:
        shard_dataset(data_dir / "annotations.json", data_dir / "images", out, shard_size=per_shard)
        return stream.expand_urls(str(out))  # via out/train-manifest.json
    coco = json.loads((data_dir / "annotations.json").read_text())
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    samples = []
    for im in sorted(coco["images"], key=lambda r: r["id"]):
        ext = im["file_name"].rsplit(".", 1)[-1].lower()
        samples.append({
            "key": f"{im['id']:012d}", "ext": ext, "image": (data_dir / "images" / im["file_name"]).read_bytes(),
            "meta": {"image_id": im["id"], "file_name": im["file_name"], "width": im["width"],
                     "height": im["height"],
                     "annotations": [{k: a.get(k) for k in ("id", "bbox", "category_id", "iscrowd", "area")}
                                     for a in anns.get(im["id"], [])]},
        })
    return write_shards(out, samples, per_shard)


@pytest.mark.skipif(not (SHARED / "coco128-train").is_dir(), reason="shared coco128-train data absent")
def test_eval_rough_boxes_reproduce_paper_baseline(tmp_path):
    data_dir = SHARED / "coco128-train"
    urls = coco_to_shards(data_dir, tmp_path / "shards")
    n_boxes = sum(1 for a in json.loads((data_dir / "annotations.json").read_text())["annotations"]
                  if not a.get("iscrowd"))
    ious = []
    it = eval_batches(urls, ModelConfig(input_size=32), JitterConfig(), seed=0, batch_size=256)
    for b in it:
        ious.append(paired_iou(b["rough"].numpy(), b["true"].numpy()))
    iou = np.concatenate(ious)
    assert len(iou) + sum(it.stats.skipped_boxes.values()) == n_boxes
    assert 78.0 <= 100 * iou.mean() <= 85.0


def test_cut_crops_equals_roi_align_crop_images():
    from snapper.crop import crop_images

    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.integers(0, 256, (3, 47, 61), dtype=np.uint8))
    wins = np.array([
        [3.3, 5.7, 58.9, 43.2],  # downscaled (several samples per bin)
        [-20.5, -10.2, 6.1, 3.3],  # mostly outside, top-left
        [55.2, 40.1, 70.9, 52.7],  # past the bottom-right
        [10.0, 10.0, 12.5, 11.0],  # tiny: upscaled
        [100.0, 100.0, 120.0, 130.0],  # misses the image entirely
        [-30.0, -30.0, 90.0, 80.0],  # larger than the image
    ])
    for size in (16, 8):
        for scale in ((1.0, 1.0), (0.5, 0.25)):
            ref = crop_images(img, wins, size, scale)
            got = stream.cut_crops(img, wins, size, scale)
            assert got.shape == ref.shape
            torch.testing.assert_close(got, ref, atol=0.05, rtol=0)
            mirror = np.array([True, False, True, True, False, True])
            got = stream.cut_crops(img, wins, size, scale, mirror=mirror)
            torch.testing.assert_close(got[mirror], ref[mirror].flip(-1), atol=0.05, rtol=0)
            torch.testing.assert_close(got[~mirror], ref[~mirror], atol=0.05, rtol=0)


def test_dct_scale_is_exact_for_sizes_k_does_not_divide():
    h, w = 427, 301  # odd: decoded sizes are ceil(n / k)
    arr = np.full((h, w, 3), BG, np.uint8)
    arr[:400] = FG
    data = encode(arr, "JPEG")
    for k in (2, 4, 8):
        li = stream.load_image(data, min_scale=1.0 / k - 1e-3)
        dh, dw = li.tensor.shape[1:]
        if dh == h:
            continue  # PIL chose a finer scale than asked: nothing to check
        kk = round(h / dh)
        sy = stream.dct_scale(dh, h)
        assert sy == 1.0 / kk != dh / h
        col = li.tensor.float().mean(0)[:, dw // 2].numpy()
        bright_rows = ((col - BG) / (FG - BG)).clip(0, 1).sum()  # where the edge lies, decoded px
        assert abs(bright_rows - 400 * sy) < 0.1 and abs(400 * sy - 400 * dh / h) > 0.2
