"""Stream accounting: counts add up across workers, warnings are rate-limited, and a stream
that only fails stops instead of spinning."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from snapper.data.accounting import MAX_WARNINGS_PER_REASON, StreamStats, Tally


def test_counts_travel_as_dicts_and_merge():
    t = Tally()
    t.delivered(3)
    t.image_failed("corrupt_image", "a.jpg", n_boxes=2)
    t.box_failed("box_degenerate", "ann 7")
    t.excluded("crowd", 4)
    t.excluded("small", 0)
    assert t.shard_failed(OSError("unreadable")) is True  # handler form: go on
    t.shard_problem("truncated", "shard-1.tar ended early", lost_images=2, lost_boxes=3)
    d = t.take()
    assert d == {"images": 1, "boxes": 3, "skipped_images": {"corrupt_image": 1, "shard_truncated": 2},
                 "skipped_boxes": {"corrupt_image": 2, "box_degenerate": 1, "shard_truncated": 3},
                 "excluded_boxes": {"crowd": 4}, "shard_errors": 2,
                 "shard_problems": {"unreadable": 1, "truncated": 1}}
    assert not t.pending and t.take()["images"] == 0  # take() hands the counts on once
    total = StreamStats()
    total.merge(d)
    total.merge(StreamStats(images=2, boxes=5, skipped_images=Counter(bad_json=1)))
    assert (total.images, total.boxes, total.shard_errors) == (3, 8, 2)
    assert total.skipped_images == Counter(corrupt_image=1, bad_json=1, shard_truncated=2)
    assert total.shard_problems == Counter(unreadable=1, truncated=1) and total.n_skipped_images == 4


def test_warnings_are_rate_limited_per_reason(caplog):
    t = Tally()
    with caplog.at_level(logging.WARNING, logger="snapper.data.accounting"):
        for i in range(MAX_WARNINGS_PER_REASON + 5):
            t.box_failed("box_outside_image", f"ann {i}")
        t.box_failed("box_degenerate", "ann x")
    skips = [r for r in caplog.records if r.getMessage().startswith("skipped (box_outside_image)")]
    assert len(skips) == MAX_WARNINGS_PER_REASON
    assert "counted but not logged" in caplog.text and "skipped (box_degenerate)" in caplog.text
    assert t.stats.skipped_boxes["box_outside_image"] == MAX_WARNINGS_PER_REASON + 5


def test_consecutive_failures_end_a_stream_that_delivers_nothing():
    t = Tally(failure_limit=3)
    t.image_failed("corrupt_image", "1")
    t.image_failed("corrupt_image", "2")
    t.delivered(1)  # a delivery resets the run of failures
    t.image_failed("corrupt_image", "3")
    t.shard_failed(OSError("x"))
    with pytest.raises(RuntimeError, match="3 consecutive"):
        t.image_failed("corrupt_image", "5")
