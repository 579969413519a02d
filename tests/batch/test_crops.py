"""Per-image work: crops cut by the fast CPU kernel (roi_align's numbers to float rounding),
decoded at the coarsest scale the crops allow, image problems as kept rows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from snapper import batch as B
from snapper.batch import crops as C
from snapper.crop import crop_images, cut_crops, to_uint8
from snapper.imageio import load_image
from tests.batchdata import TINY, fast_config as cfg


def _items(ann, images, **kw) -> dict[int, dict]:
    inp = B.load_rough(ann)
    (chunk,) = B.plan_chunks(ann, images, 100)
    jobs, _ = C.chunk_jobs(inp, chunk)
    ds = C.ImageCrops(jobs, TINY.input_size, TINY.context, cfg(**kw))
    return {job.image_id: ds[i] for i, job in enumerate(jobs)}


def test_crops_come_from_the_fast_kernel(rough):
    ann, images, _ = rough
    item = _items(ann, images)[1]
    geo = item["geometry"]
    assert item["crops"].dtype.is_floating_point is False and item["crops"].shape == (len(geo), 3, 48, 48)
    assert item["ann_ids"] == [1001, 1011, 1012, 1013] and item["size"] == (80, 60)
    image = load_image(images / "a.jpg", min_scale=geo.decode_scale())
    fast = to_uint8(cut_crops(image.tensor, geo.windows, geo.size, image.scale))
    assert (item["crops"] == fast).all()
    slow = to_uint8(crop_images(image.tensor, geo.windows, geo.size, image.scale))
    assert (item["crops"].int() - slow.int()).abs().max() <= 1  # same numbers to float rounding


def test_image_problems_become_kept_rows(rough):
    ann, images, _ = rough
    items = _items(ann, images)
    want = {3: "image_missing", 4: "image_corrupt", 5: "image_size_mismatch", 6: "image_path_invalid"}
    for image_id, reason in want.items():
        item = items[image_id]
        assert item["crops"] is None and item["kept"], image_id
        assert {r["reason"] for r in item["kept"]} == {reason}
    # no width/height in the JSON: read from the file's header, then snapped
    assert items[7]["size"] == (80, 60) and items[7]["ann_ids"] == [7001]


def test_a_bad_setting_is_not_an_image_verdict(rough):
    """Per-image handling catches image errors only: a setting that slipped past
    check_config fails loudly instead of keeping every box as image_corrupt."""
    ann, images, _ = rough
    with pytest.raises(ValueError, match="buffer_ratio"):
        _items(ann, images, buffer_ratio=-1.0)


@pytest.mark.parametrize("draft", [True, False])
def test_decoded_at_the_coarsest_scale_the_crops_allow(tmp_path, monkeypatch, draft):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((600, 800, 3), 90, np.uint8)).save(images / "big.jpg")
    job = C.ImageJob(1, str(images / "big.jpg"), (800, 600), [(1, [100.0, 100.0, 400.0, 300.0])])
    seen = []

    def spy(path, min_scale=1.0, **kw):
        seen.append(min_scale)
        return load_image(path, min_scale=min_scale, **kw)

    monkeypatch.setattr(C, "load_image", spy)
    item = C.ImageCrops([job], 48, 1.4, cfg(draft_decode=draft))[0]
    assert seen == [item["geometry"].decode_scale() if draft else 1.0]
    assert seen[0] == (pytest.approx(48 / (300 * 1.4)) if draft else 1.0)
    assert item["crops"].shape == (1, 3, 48, 48) and int(item["crops"].float().mean().round()) == 90
