"""What a stream delivered and what it did not, by reason, so that nothing is lost silently.

Each loader worker counts in its own :class:`Tally`; the counts travel to the main process
inside the batches (under ``"stats"``, see :func:`snapper.data.iterators.batched`) and add up
in the loader's :class:`StreamStats`. Warnings are rate-limited per reason: a broken dataset
must not flood the log, but the counts go on.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MAX_WARNINGS_PER_REASON = 20  # per stream pass and worker; counting goes on silently after that


@dataclass
class StreamStats:
    """Counts by reason. ``skipped_*`` are failures (corrupt image, malformed JSON, unusable
    box, samples a broken shard did not deliver as ``shard_<reason>``); ``excluded_boxes``
    are boxes left out by rule (crowd, below ``min_box_size``); ``shard_errors`` counts
    shards that failed, once each, and ``shard_problems`` the same by reason (``truncated``,
    ``hash_mismatch``, ``bad_member``, ...)."""

    images: int = 0
    boxes: int = 0
    skipped_images: Counter = field(default_factory=Counter)
    skipped_boxes: Counter = field(default_factory=Counter)
    excluded_boxes: Counter = field(default_factory=Counter)
    shard_errors: int = 0
    shard_problems: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "boxes": self.boxes,
            "skipped_images": dict(self.skipped_images),
            "skipped_boxes": dict(self.skipped_boxes),
            "excluded_boxes": dict(self.excluded_boxes),
            "shard_errors": self.shard_errors,
            "shard_problems": dict(self.shard_problems),
        }

    def merge(self, other: "StreamStats | dict[str, Any]") -> None:
        d = other.as_dict() if isinstance(other, StreamStats) else other
        self.images += int(d.get("images", 0))
        self.boxes += int(d.get("boxes", 0))
        self.skipped_images.update(d.get("skipped_images", {}))
        self.skipped_boxes.update(d.get("skipped_boxes", {}))
        self.excluded_boxes.update(d.get("excluded_boxes", {}))
        self.shard_errors += int(d.get("shard_errors", 0))
        self.shard_problems.update(d.get("shard_problems", {}))

    @property
    def n_skipped_images(self) -> int:
        return sum(self.skipped_images.values())


class Tally:
    """Per-pass (per worker) counting and rate-limited warnings; ``take`` hands the counts on.

    ``failure_limit``: that many failed images/shards in a row with nothing delivered raises
    (an endless training stream that delivers nothing is broken, not unlucky)."""

    def __init__(self, failure_limit: int | None = None):
        self.stats = StreamStats()
        self.pending = False
        self._warned: Counter = Counter()
        self._consecutive = 0
        self._failure_limit = failure_limit

    def _warn(self, reason: str, message: str) -> None:
        self._warned[reason] += 1
        if self._warned[reason] <= MAX_WARNINGS_PER_REASON:
            log.warning("skipped (%s): %s", reason, message)
            if self._warned[reason] == MAX_WARNINGS_PER_REASON:
                log.warning("further %r skips are counted but not logged in this pass", reason)

    def _failed(self, message: str) -> None:
        self._consecutive += 1
        if self._failure_limit is not None and self._consecutive >= self._failure_limit:
            raise RuntimeError(f"{self._consecutive} consecutive images/shards failed, none delivered; "
                               f"last: {message}")

    def image_failed(self, reason: str, message: str, n_boxes: int = 0) -> None:
        self.pending = True
        self.stats.skipped_images[reason] += 1
        if n_boxes:
            self.stats.skipped_boxes[reason] += n_boxes
        self._warn(reason, message)
        self._failed(message)

    def box_failed(self, reason: str, message: str) -> None:
        self.pending = True
        self.stats.skipped_boxes[reason] += 1
        self._warn(reason, message)

    def excluded(self, reason: str, n: int) -> None:
        if n:
            self.pending = True
            self.stats.excluded_boxes[reason] += n

    def delivered(self, n_boxes: int) -> None:
        self.pending = True
        self._consecutive = 0
        self.stats.images += 1
        self.stats.boxes += n_boxes

    def shard_failed(self, exn: Exception) -> bool:
        """WebDataset-style handler: count, warn, go on with the next shard."""
        self.shard_problem(getattr(exn, "reason", "unreadable"), f"{type(exn).__name__}: {exn}")
        return True

    def shard_problem(self, reason: str, message: str, lost_images: int = 0, lost_boxes: int = 0) -> None:
        """One shard failed (counted once), and the samples and boxes it did not deliver
        (when its manifest says how many it has) as skipped ``shard_<reason>``."""
        self.pending = True
        self.stats.shard_errors += 1
        self.stats.shard_problems[reason] += 1
        if lost_images:
            self.stats.skipped_images[f"shard_{reason}"] += lost_images
        if lost_boxes:
            self.stats.skipped_boxes[f"shard_{reason}"] += lost_boxes
        self._warn("shard_error", message + (f" ({lost_images} sample(s), {lost_boxes} box(es) lost)"
                                             if lost_images or lost_boxes else ""))
        self._failed(message)

    def take(self) -> dict[str, Any]:
        d = self.stats.as_dict()
        self.stats = StreamStats()
        self.pending = False
        return d
