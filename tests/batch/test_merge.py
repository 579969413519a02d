"""Merging: nothing is written unless every annotation is accounted exactly once."""

from __future__ import annotations

import pytest

from snapper import batch as B
from tests.batchdata import fast_config as cfg


def test_merge_refuses_incomplete_or_duplicated_results(rough, ckpt, tmp_path):
    ann, images, _ = rough
    c = cfg()
    chunks = B.plan_chunks(ann, images, c.chunk_images)
    paths = [B.snap_chunk(ch, ckpt, tmp_path / "o", c) for ch in chunks]
    with pytest.raises(B.AccountingError, match=r"missing"):
        B.merge_chunks(ann, paths[:-1], tmp_path / "o", c)
    with pytest.raises(B.AccountingError, match=r"1 duplicated|duplicated"):
        B.merge_chunks(ann, paths + paths[:1], tmp_path / "o", c)
    assert not (tmp_path / "o" / B.OUTPUT_JSON).exists()
    assert B.merge_chunks(ann, paths, tmp_path / "o", c).is_file()
