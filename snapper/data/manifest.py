"""Finding shards: shard manifests and every form of shard URL the streams accept.

``<split>-manifest.json`` (written last by :mod:`snapper.data.shards`) lists a split's
shards with their sha256, counts and every skip. Readers reach the shards through it, locally
or on an object store: :func:`shard_urls` turns any URL of a manifest into the shard URLs
(the manifest's file name in the URL replaced by each shard's), and :func:`expand_urls`
accepts braces, ``::`` lists, globs, ``pipe:`` commands, manifests and shard folders.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import braceexpand
from webdataset.gopen import gopen

from snapper.errors import BadFileError, ConfigError, InputNotFoundError, file_error

FORMAT = "snapper-shards/1"
MANIFEST_SUFFIX = "-manifest.json"
_SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")
_SHARD_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*-[0-9]{6}\.tar$")
_MANIFEST_RE = re.compile(r"([A-Za-z0-9_]+)-manifest\.json")
_SHARD_NAME_RE = re.compile(r"^(?P<split>[A-Za-z0-9][A-Za-z0-9_]*)-[0-9]{6}\.tar$")


class ShardError(BadFileError, RuntimeError):
    """A shard could not be written or read; the message names the shard and the item."""


def check_split(split: str) -> str:
    """``split`` if it is a safe split name (it becomes part of file names and URLs)."""
    if not _SPLIT_RE.match(split):
        raise ConfigError(f"split name {split!r} must be letters, digits and underscores")
    return split


@dataclass
class Manifest:
    path: Path
    data: dict[str, Any]
    written: list[str] = field(default_factory=list)  # shards written by this run (not persisted)

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.data["shards"]

    @property
    def counts(self) -> dict[str, int]:
        return self.data["counts"]

    @property
    def skip_counts(self) -> dict[str, int]:
        return self.data["skip_counts"]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Manifest":
        p = Path(path)
        try:
            data = json.loads(p.read_bytes())
        except OSError as e:
            raise file_error(p, e) from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"{p}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ShardError(f"{p}: not a {FORMAT} manifest (format={fmt!r})")
        return cls(p, data)


def manifest_path(out_dir: str | os.PathLike[str], split: str) -> Path:
    return Path(out_dir) / f"{check_split(split)}{MANIFEST_SUFFIX}"


def _is_url(s: str) -> bool:
    return s.startswith("pipe:") or "://" in s


def is_local(url: str) -> bool:
    """A local file (``file://`` URLs included), as opposed to ``pipe:`` or a remote URL."""
    return not url.startswith("pipe:") and "://" not in url.replace("file://", "", 1)


def local_path(url: str) -> str:
    """The file path of a local URL (``file://`` stripped)."""
    return url[len("file://"):] if url.startswith("file://") else url




def _manifest_data(source: str | os.PathLike[str] | Manifest, mname: str) -> tuple[dict[str, Any], Path | None, str | None]:
    """(manifest JSON, local folder of the shards or None, URL template or None)."""
    if isinstance(source, Manifest):
        return source.data, source.path.parent, None
    if isinstance(source, str) and _is_url(source):
        if mname not in source:
            raise ConfigError(f"URL {source!r} does not name {mname}")
        with gopen(source, "rb") as f:
            return json.loads(f.read()), None, source
    p = Path(source)
    p = p / mname if p.is_dir() else p
    return Manifest.load(p).data, p.parent, None


def shard_urls(source: str | os.PathLike[str] | Manifest, split: str = "train") -> list[str]:
    """Shard URLs for readers (``wds.WebDataset(urls)``), in manifest order.

    ``source``: a :class:`Manifest`, a local output folder or manifest file (-> absolute
    paths), or any webdataset URL of the manifest, e.g. ``pipe:aws s3 cp
    s3://b/coco/train-manifest.json -`` or ``https://host/coco/train-manifest.json`` (-> the
    same URL with the manifest's file name replaced by each shard's; file names are validated
    so they cannot inject anything into a ``pipe:`` command).
    """
    mname = f"{check_split(split)}{MANIFEST_SUFFIX}"
    data, base, url_tpl = _manifest_data(source, mname)
    if data.get("format") != FORMAT or data.get("split") != split:
        raise ShardError(f"{source}: not a {FORMAT} manifest for split {split!r}")
    urls = []
    for s in data["shards"]:
        fname = s["file"]
        if not _SHARD_FILE_RE.match(fname):
            raise ShardError(f"{source}: refusing shard file name {fname!r}")
        if url_tpl is not None:
            urls.append(url_tpl.replace(mname, fname))
        else:
            urls.append(str((base / fname).resolve()))  # type: ignore[operator]
    return urls


def _manifest_urls(url: str) -> list[str]:
    """Shard URLs listed by a manifest given by any URL (local or any webdataset URL)."""
    found = _MANIFEST_RE.findall(url)
    if not found:
        raise ConfigError(f"{url}: a manifest URL must name <split>-manifest.json")
    return shard_urls(local_path(url) if is_local(url) else url, found[-1])


def _read_manifest(url: str) -> dict[str, Any]:
    with gopen(local_path(url) if is_local(url) else url, "rb") as f:
        return json.loads(f.read())


def _folder_urls(path: str) -> list[str]:
    """A shard folder: its one manifest, else its ``*.tar``."""
    manifests = sorted(glob.glob(os.path.join(path, "*" + MANIFEST_SUFFIX)))
    if len(manifests) > 1:
        raise ConfigError(f"shard directory {path} holds several splits "
                         f"({', '.join(os.path.basename(m) for m in manifests)}): name one manifest")
    found = _manifest_urls(manifests[0]) if manifests else sorted(glob.glob(os.path.join(path, "*.tar")))
    if not found:
        raise InputNotFoundError(f"shard directory {path} holds no *.tar files")
    return found


def _expand_one(url: str) -> list[str]:
    if MANIFEST_SUFFIX in url:
        return _manifest_urls(url)
    if not is_local(url):
        return [url]
    path = local_path(url)
    if os.path.isdir(path):
        return _folder_urls(path)
    if glob.has_magic(path):
        found = sorted(glob.glob(path))
        if not found:
            raise InputNotFoundError(f"shard pattern {path} matches no file")
        return found
    if not os.path.isfile(path):
        raise InputNotFoundError(f"shard {path} does not exist")
    return [url]


def expand_urls(urls: "str | os.PathLike[str] | Sequence[str | os.PathLike[str]]") -> list[str]:
    """Shard URLs from braces, ``::``-joined lists, globs, ``pipe:`` commands, shard manifests
    (``<split>-manifest.json``, local or remote) or directories (their one manifest, else their
    ``*.tar``). Local shards must exist: a typo fails here, not hours into training."""
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for item in items:
        for part in str(item).split("::"):
            for url in braceexpand.braceexpand(part):
                out.extend(_expand_one(url))
    if not out:
        raise ConfigError("no shard URLs given")
    return out


@functools.lru_cache(maxsize=64)
def _manifest_entries(path: str, mtime_ns: int) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
        return {s["file"]: s for s in data["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def manifest_entry(url: str) -> dict[str, Any] | None:
    """The manifest's record of a local shard (``samples``, ``boxes``, ``bytes``,
    ``sha256``), from ``<split>-manifest.json`` beside it; None for remote shards and for
    tars without a manifest."""
    if not is_local(url):
        return None
    path = os.path.abspath(local_path(url))
    m = _SHARD_NAME_RE.match(os.path.basename(path))
    if m is None:
        return None
    manifest = os.path.join(os.path.dirname(path), m["split"] + MANIFEST_SUFFIX)
    try:
        mtime = os.stat(manifest).st_mtime_ns
    except OSError:
        return None
    return _manifest_entries(manifest, mtime).get(os.path.basename(path))


def count_images(urls: Sequence[str]) -> int | None:
    """Images in local shards: from their manifest where it lists them, else from tar headers
    (no data read; a broken tar counts what it holds, the streams count its error); None if
    any is remote."""
    n = 0
    for url in urls:
        if not is_local(url):
            return None
        entry = manifest_entry(url)
        if entry is not None:
            n += int(entry.get("samples", 0))
            continue
        try:
            with tarfile.open(local_path(url), "r:") as tf:
                for m in tf:
                    n += m.isfile() and m.name.endswith(".json")
        except (tarfile.TarError, EOFError):
            pass
    return n


def count_from_manifests(items: Sequence[str]) -> int | None:
    """Images listed by the manifests when every entry names one (remote shards: no tar to scan)."""
    if not items or not all(_MANIFEST_RE.search(str(i)) for i in items):
        return None
    return sum(int(_read_manifest(str(i))["counts"]["images"]) for i in items)
