"""The training stream on tiny generated shards: shapes, targets that match the crop content,
reproducible epochs, exact rank x worker splits, device-side cropping."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from snapper.data import samples
from snapper.data.train_stream import train_loader
from tests.data.shardfactory import CORRUPT_GOOD_IDS, cfg_for, corrupt_samples, measured_edges, rect_samples, write_shards


def test_reads_a_manifest_or_shard_folder(coco_shards):
    out, _ = coco_shards
    got = Counter(int(i) for b in train_loader(cfg_for([str(out)])) for i in b["image_id"])
    assert got == Counter({i + 1: 2 for i in range(6)})
    loader = train_loader(cfg_for([str(out / "train-manifest.json")], resampled=True))
    assert loader.batches_per_epoch == 3  # 6 images x 2 boxes / batch 4


def test_train_batches_shapes_and_targets(rect_shards):
    urls = rect_shards(6, boxes=3)
    cfg = cfg_for(urls, resampled=True, epoch_samples=20, hflip=True, color_jitter=0.2)
    loader = train_loader(cfg)
    batches = list(loader)
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


def test_resampled_epochs_with_persistent_workers(rect_shards):
    urls = rect_shards(6, boxes=2)
    cfg = cfg_for(urls, resampled=True, epoch_samples=24, workers=2)
    loader = train_loader(cfg)
    assert loader.batches_per_epoch == 6  # 24 crops / batch 4, 3 per worker
    epochs = [[b["annotation_id"].tolist() for b in loader] for _ in range(2)]
    assert [len(e) for e in epochs] == [6, 6] and epochs[0] != epochs[1]
    loader.set_epoch(0)  # a resumed run restarts the same reproducible stream
    assert [b["annotation_id"].tolist() for b in loader] == epochs[0]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_crop_content_matches_target(tmp_path, fmt, monkeypatch):
    if fmt == "PNG":
        rects, size = rect_samples(4, boxes=2), 32
    else:  # large JPEG, small input: the crops are downscaled ~20x, so a draft decode is used
        rects, size = rect_samples(3, boxes=2, w=1600, h=1200, fmt="JPEG"), 32
    urls = write_shards(tmp_path, rects)
    cfg = cfg_for(urls)
    cfg.model.input_size = size
    scales = []
    real_load = samples.load_image

    def spy(*a, **kw):
        li = real_load(*a, **kw)
        scales.append(li.scale[0])
        return li

    monkeypatch.setattr(samples, "load_image", spy)
    n = 0
    for b in train_loader(cfg):
        for crop, t in zip(b["image"], b["target"]):
            m = measured_edges(crop)
            assert m is not None
            np.testing.assert_allclose(m, t.numpy(), atol=1.0)
            n += 1
    assert n == 2 * len(rects)
    if fmt == "JPEG":
        assert max(scales) <= 0.25  # decoded at 1/4 or 1/8 of full size
    else:
        assert min(scales) == 1.0


def test_hflip_keeps_crop_and_target_consistent_in_the_stream(rect_shards):
    # every crop agrees with its target, and both orientations occur
    urls = rect_shards(8, boxes=2, two_tone=True)
    orient = Counter()
    for b in train_loader(cfg_for(urls, hflip=True)):
        for crop, t in zip(b["image"], b["target"]):
            np.testing.assert_allclose(measured_edges(crop), t.numpy(), atol=1.0)
            x0, y0, x1, y1 = t.round().int().tolist()
            g = crop.float().mean(0)[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]
            half = g.shape[1] // 2
            orient["left_bright" if g[:, :half].mean() > g[:, -half:].mean() else "flipped"] += 1
    assert orient["left_bright"] > 0 and orient["flipped"] > 0


def test_rank_and_worker_split_covers_every_shard_once(rect_shards):
    urls = rect_shards(16, boxes=2, per_shard=2)  # 8 shards for 2 ranks x 2 workers
    cfg = cfg_for(urls, workers=2)
    loaders = [train_loader(cfg, rank=r, world_size=2) for r in range(2)]
    for _epoch in range(2):
        per_rank = [Counter(int(i) for b in ld for i in b["image_id"]) for ld in loaders]
        assert not set(per_rank[0]) & set(per_rank[1])
        total = per_rank[0] + per_rank[1]
        assert total == Counter({i + 1: 2 for i in range(16)})  # each image once, both its boxes
        assert all(ld.stats.shard_errors == 0 for ld in loaders)


def test_too_few_shards_fails_fast(rect_shards):
    urls = rect_shards(6, per_shard=2)  # 3 shards
    with pytest.raises(ValueError, match=r"3 shard\(s\) for 2 rank\(s\) x 2 worker\(s\)"):
        train_loader(cfg_for(urls, workers=2), rank=0, world_size=2)
    train_loader(cfg_for(urls, workers=2, resampled=True), rank=0, world_size=2)  # fine when resampled


def test_corrupt_samples_counted_warned_skipped(tmp_path, caplog):
    urls = write_shards(tmp_path, corrupt_samples(), per_shard=2)
    with caplog.at_level("WARNING", logger="snapper.data.accounting"):
        loader = train_loader(cfg_for(urls))
        got = Counter(int(i) for b in loader for i in b["image_id"])
    assert set(got) == CORRUPT_GOOD_IDS and all(v == 2 for v in got.values())
    assert loader.stats.skipped_images == Counter({"corrupt_image": 1, "bad_json": 1})
    assert loader.stats.skipped_boxes["corrupt_image"] == 2
    assert "corrupt_image" in caplog.text and "bad_json" in caplog.text and "000000000002" in caplog.text


@pytest.mark.parametrize("crop_on", ["worker", "device"])
def test_buffer_ratio_range_varies_the_context_and_keeps_targets_right(rect_shards, crop_on):
    urls = rect_shards(8, boxes=2)

    def extents(**kw):
        loader = train_loader(cfg_for(urls, crop_on=crop_on, **kw))
        out = []
        for b in loader:
            b = loader.to_device(b, "cpu") if crop_on == "device" else b
            for crop, t in zip(b["image"], b["target"]):
                np.testing.assert_allclose(measured_edges(crop), t.numpy(), atol=1.0)
                out.append(float(t[2] - t[0]) / crop.shape[-1])
        return np.array(out)

    fixed = extents()  # ratio 1: the true box fills ~1/1.4 of the crop, give or take the jitter
    drawn = extents(buffer_ratio_min=1.0, buffer_ratio_max=1.8)
    assert fixed.min() > 0.6 and drawn.min() < 0.6 and len(drawn) == len(fixed) == 16


def test_device_crop_mode(rect_shards):
    loader = train_loader(cfg_for(rect_shards(4, boxes=2), crop_on="device", hflip=True))
    n = 0
    for raw in loader:
        assert "images" in raw and raw["images"][0]["image"].dtype == torch.uint8
        b = loader.to_device(raw, "cpu")
        assert b["image"].dtype == torch.uint8 and b["image"].shape[1:] == (3, 32, 32)
        for crop, t in zip(b["image"], b["target"]):
            np.testing.assert_allclose(measured_edges(crop), t.numpy(), atol=1.0)
            n += 1
    assert n == 8


def test_bad_settings_fail_before_reading(rect_shards):
    urls = rect_shards(2)
    with pytest.raises(ValueError, match="crop_on"):
        train_loader(cfg_for(urls, crop_on="gpu"))
    with pytest.raises(ValueError, match="boxes_per_image"):
        train_loader(cfg_for(urls, boxes_per_image=0))
    with pytest.raises(ValueError, match="buffer_ratio_min/max"):
        train_loader(cfg_for(urls, buffer_ratio_min=1.5, buffer_ratio_max=1.2))
    with pytest.raises(ValueError, match="buffer_ratio_min/max"):
        train_loader(cfg_for(urls, buffer_ratio_min=1.0, buffer_ratio_max=float("inf")))
    with pytest.raises(ValueError, match="rank 2"):
        train_loader(cfg_for(urls), rank=2, world_size=2)
    with pytest.raises(ValueError, match="train_shards is empty"):
        train_loader(cfg_for([]))


# ------------------------------------------- the crop kernel the stream relies on (snapper.crop)
