"""The small generators both streams are built from: a seeded shuffle buffer, batching that
carries the accounting along, and which DataLoader worker this is."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import get_worker_info

from snapper.data.accounting import Tally


def shuffle(items: Iterable[Any], bufsize: int, rng: np.random.Generator) -> Iterator[Any]:
    """Buffered shuffle drawing from ``rng`` only (so a seeded stream is reproducible)."""
    if bufsize <= 1:
        yield from items
        return
    buf: list[Any] = []
    for x in items:
        if len(buf) < bufsize:
            buf.append(x)
            continue
        j = int(rng.integers(len(buf)))
        yield buf[j]
        buf[j] = x
    for j in rng.permutation(len(buf)):
        yield buf[j]


def batched(
    items: Iterable[Any],
    n: int,
    collate: Callable[[list[Any]], dict[str, Any]],
    tally: Tally,
    partial: bool,
) -> Iterator[dict[str, Any]]:
    """Batches carry the counts since the previous batch under "stats"; a final stats-only
    batch ({"stats", "empty": True}) reports skips that happened after the last full batch."""
    buf: list[Any] = []
    for x in items:
        buf.append(x)
        if len(buf) == n:
            batch = collate(buf)
            batch["stats"] = tally.take()
            yield batch
            buf = []
    if buf and partial:
        batch = collate(buf)
        batch["stats"] = tally.take()
        yield batch
    if tally.pending:
        yield {"stats": tally.take(), "empty": True}


def worker_slot() -> tuple[int, int]:
    """(this DataLoader worker's id, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)
