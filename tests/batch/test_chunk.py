"""Snapping one chunk: result names that change with everything that changes the result,
settings refused before any work, a changed input refused, a bounded model cache per process."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from snapper import batch as B
from snapper.batch import chunk as chunk_module
from snapper.batch.schema import ROW_COLUMNS
from snapper.config import SnapSettings
from snapper.device import resolve_device
from tests.batchdata import fast_config as cfg


def test_result_name_changes_with_what_changes_the_result(rough, tmp_path):
    ann, images, _ = rough
    chunk = B.plan_chunks(ann, images, 2)[0]
    base = B.chunk_result_path(chunk, tmp_path, "weights-a", cfg(), "images-a")
    assert base.parent == tmp_path / B.CHUNKS_DIR and base.name.startswith("chunk-00000-")
    for kw in ({"buffer_ratio": 1.5}, {"min_box_size": 7.0}, {"draft_decode": False}, {"precision": "fp32"},
               {"max_pixels": 1000}, {"passes": 2}, {"flip": True}):
        assert B.chunk_result_path(chunk, tmp_path, "weights-a", cfg(**kw), "images-a") != base, kw
    assert B.chunk_result_path(chunk, tmp_path, "weights-b", cfg(), "images-a") != base
    assert B.chunk_result_path(chunk, tmp_path, "weights-a", cfg(), "images-b") != base  # an image's content
    # how the work is scheduled does not change the result: the same file is reused
    assert B.chunk_result_path(chunk, tmp_path, "weights-a", cfg(batch_size=64, workers=3, chunk_images=9),
                               "images-a") == base
    other = B.plan_chunks(ann, tmp_path, 2)[0]  # another images folder
    assert B.chunk_result_path(other, tmp_path, "weights-a", cfg(), "images-a") != base


@pytest.mark.parametrize(
    "kw, match",
    [({"buffer_ratio": 0.0}, "buffer_ratio"), ({"buffer_ratio": float("nan")}, "buffer_ratio"),
     ({"buffer_ratio": -1.0}, "buffer_ratio"), ({"batch_size": 0}, "batch_size"), ({"chunk_images": 0}, "chunk_images"),
     ({"precision": "fp8"}, "precision"), ({"max_pixels": 0}, "max_pixels")],
)
def test_settings_that_would_fail_every_box_are_refused_first(rough, tmp_path, kw, match):
    ann, images, _ = rough
    with pytest.raises(ValueError, match=match):
        cfg(**kw)  # the config refuses it when built
    chunk = B.plan_chunks(ann, images, 2)[0]
    with pytest.raises(ValueError, match=match):
        B.snap_chunk(chunk, tmp_path / "no-model-needed", tmp_path / "o", cfg(**kw))
    assert not (tmp_path / "o").exists()


def test_a_file_changed_since_planning_is_refused(rough, ckpt, tmp_path):
    ann, images, data = rough
    chunk = B.plan_chunks(ann, images, 2)[0]
    ann.write_text(json.dumps({**data, "info": {"description": "edited"}}))
    with pytest.raises(B.BatchInputError, match="changed since the chunks were planned"):
        B.snap_chunk(chunk, ckpt, tmp_path / "o", cfg())


def test_chunk_rows_account_for_its_annotations(rough, ckpt, tmp_path):
    ann, images, _ = rough
    chunk = B.plan_chunks(ann, images, 2)[0]  # images 1 and 2
    df = pd.read_parquet(B.snap_chunk(chunk, ckpt, tmp_path, cfg()))
    assert len(df) == chunk.n_annotations and df["annotation_id"].is_unique
    assert set(df["image_id"]) == {1, 2} and list(df.columns) == ROW_COLUMNS


def test_one_model_per_checkpoint_device_and_precision(ckpt):
    a = B.get_snapper(ckpt, SnapSettings(device="cpu", batch_size=4))
    assert B.get_snapper(ckpt, SnapSettings(device="cpu", batch_size=4)) is a
    assert B.get_snapper(ckpt, SnapSettings(device="cpu", batch_size=4, precision="fp32")) is not a
    nchw = B.get_snapper(ckpt, SnapSettings(device="cpu", batch_size=4, channels_last=False))
    assert nchw is not a and a.channels_last and not nchw.channels_last


def test_the_model_cache_is_bounded(ckpt):
    """A long-lived worker serving many jobs keeps the last few models, not every one it saw."""
    chunk_module._load_snapper.cache_clear()
    first = B.get_snapper(ckpt, SnapSettings(device="cpu", batch_size=1))
    for bs in range(2, 2 + 2 * chunk_module.MODEL_CACHE_SIZE):
        B.get_snapper(ckpt, SnapSettings(device="cpu", batch_size=bs))
    assert chunk_module._load_snapper.cache_info().currsize == chunk_module.MODEL_CACHE_SIZE
    assert B.get_snapper(ckpt, SnapSettings(device="cpu", batch_size=1)) is not first  # evicted, loaded again
    auto = B.get_snapper(ckpt, SnapSettings(device="auto", batch_size=1))
    assert B.get_snapper(ckpt, SnapSettings(device=str(resolve_device("auto")), batch_size=1)) is auto  # one key
