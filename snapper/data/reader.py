"""The one safe shard reader, for the training and evaluation streams, the shard tools and
the tests.

Reading a tar is where a tampered or damaged shard would do harm, so every reader goes
through :func:`iter_samples`:

* member names are only ever matched, never used as paths: each must be
  ``<digits>.<ext>`` (``ext`` an image extension or ``json``), a regular file under a size
  limit; anything else (``../evil.jpg``, links, devices) stops the shard with a
  :class:`ShardProblem` naming the member;
* a local shard listed in its manifest is checked against the manifest's sha256 before it is
  read (``verify``; once per file version per process). Remote shards (``pipe:`` commands,
  URLs to object storage) are streamed unchecked: hashing them would mean downloading twice;
* a shard that ends early (a truncated copy) is one shard error, whether ``tarfile`` notices
  it or the manifest's sample count does, and the samples and boxes it did not deliver are
  counted as skipped (``shard_truncated``) when the manifest says how many there were.

:func:`shard_samples` is the streams' form: WebDataset-style sample dicts (``__key__``,
``__url__``, one entry per member extension) with every problem counted in a
:class:`~snapper.data.accounting.Tally` instead of raised.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

from webdataset.gopen import gopen

from snapper.data.accounting import Tally
from snapper.data.manifest import ShardError, is_local, local_path, manifest_entry
from snapper.data.records import IMAGE_EXTS

MEMBER_RE = re.compile(r"^([0-9]{1,20})\.(" + "|".join(IMAGE_EXTS) + r"|json)$")
MAX_MEMBER_BYTES = 1 << 30


class ShardProblem(ShardError):
    """A shard that cannot be read (whole or in part); ``reason`` is a short stable string:
    ``bad_member``, ``duplicate_member``, ``truncated``, ``hash_mismatch``, ``unreadable``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class _Counted:
    """A read-only stream that counts the bytes read through it."""

    def __init__(self, f: IO[bytes]):
        self.f, self.n = f, 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.n += len(data)
        return data


END_OF_ARCHIVE = 512  # a tar ends with zero blocks; tarfile stops quietly at a cut header, we do not


def iter_members(f: IO[bytes], name: str) -> Iterator[tuple[str, str, bytes]]:
    """``(key, ext, data)`` of every member of the tar stream ``f``, in order, each checked;
    a bad member or a tar that breaks off (also where ``tarfile`` would just stop: at a member
    boundary or inside a header, without the end-of-archive blocks) raises
    :class:`ShardProblem` naming ``name``."""
    counted = _Counted(f)
    try:
        with tarfile.open(fileobj=counted, mode="r|") as tar:  # type: ignore[call-overload]
            for m in tar:
                match = MEMBER_RE.match(m.name)
                if not m.isreg() or match is None:
                    raise ShardProblem("bad_member", f"{name}: unexpected member {m.name!r} (type {m.type!r})")
                if m.size > MAX_MEMBER_BYTES:
                    raise ShardProblem("bad_member", f"{name}: member {m.name!r} is {m.size} bytes, over the limit")
                key, ext = match.groups()
                yield key, ext, tar.extractfile(m).read()  # type: ignore[union-attr]
            while counted.read(1 << 16):
                pass
            if counted.n - tar.offset < END_OF_ARCHIVE:
                raise ShardProblem("truncated", f"{name}: ends after {tar.offset} bytes without the end-of-archive "
                                                "blocks (a cut copy?)")
    except (tarfile.TarError, EOFError) as e:
        raise ShardProblem("truncated", f"{name}: not a complete tar ({e})") from e


def iter_samples(f: IO[bytes], name: str) -> Iterator[dict[str, Any]]:
    """Members grouped by key into ``{"__key__": key, ext: bytes, ...}`` in tar order. Which
    members a sample must have is the caller's rule (the streams count a sample without JSON
    or image; :func:`snapper.data.shards.iter_shard` refuses it)."""
    sample: dict[str, Any] | None = None
    try:
        for key, ext, data in iter_members(f, name):
            if sample is not None and sample["__key__"] != key:
                yield sample
                sample = None
            if sample is None:
                sample = {"__key__": key}
            if ext in sample:
                raise ShardProblem("duplicate_member", f"{name}: duplicate member {key}.{ext}")
            sample[ext] = data
    except ShardProblem:
        if sample is not None and "json" in sample and len(sample) > 2:
            yield sample  # complete before the problem (the problem is a later member's)
        raise
    if sample is not None:
        yield sample


# ---------------------------------------------------------------------------- hashes


@functools.lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_hash(url: str, entry: dict[str, Any]) -> None:
    """Raise :class:`ShardProblem` (``hash_mismatch``) unless the local shard's bytes are the
    ones its manifest lists (hashed once per file version per process)."""
    path = local_path(url)
    st = os.stat(path)
    if st.st_size != entry.get("bytes") or _sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns) != entry.get("sha256"):
        raise ShardProblem("hash_mismatch", f"{url}: bytes differ from the sha256 in its manifest "
                                            "(a damaged or replaced copy); not read")


# ---------------------------------------------------------------------------- streams


def _boxes(sample: dict[str, Any]) -> int:
    """Non-crowd annotations of a sample (what the manifest's ``boxes`` counts)."""
    try:
        return sum(1 for a in json.loads(sample["json"])["annotations"] if not a.get("iscrowd"))
    except Exception:  # noqa: BLE001 - a malformed sample is counted by the parser; here it has no boxes
        return 0


def _read(url: str, entry: dict[str, Any] | None, verify: bool, got: list[int]) -> Iterator[dict[str, Any]]:
    if verify and entry is not None:
        check_hash(url, entry)
    with gopen(local_path(url) if is_local(url) else url, "rb") as f:
        for sample in iter_samples(f, url):
            sample["__url__"] = url
            got[0] += 1
            got[1] += _boxes(sample)
            yield sample
    if entry is not None and got[0] < int(entry.get("samples", 0)):
        raise ShardProblem("truncated", f"{url}: ended after {got[0]} of the {entry['samples']} samples its "
                                        "manifest lists")


def shard_samples(urls: Iterable[str | dict[str, str]], tally: Tally, verify: bool = True) -> Iterator[dict[str, Any]]:
    """The samples of each shard in turn (``urls``: strings or ``{"url": ...}`` dicts, as the
    streams' shard generators yield). A shard that fails is counted once in ``tally`` with its
    reason; the samples and boxes it did not deliver are counted as skipped when its manifest
    says how many it has. Reading goes on with the next shard."""
    for item in urls:
        url = item["url"] if isinstance(item, dict) else str(item)
        entry = manifest_entry(url)
        got = [0, 0]
        try:
            yield from _read(url, entry, verify, got)
        except (ShardError, OSError, ValueError) as e:
            reason = getattr(e, "reason", "unreadable")
            lost = (max(0, int(entry.get("samples", 0)) - got[0]), max(0, int(entry.get("boxes", 0)) - got[1])) \
                if entry is not None else (0, 0)
            tally.shard_problem(reason, f"{type(e).__name__}: {e}", *lost)
