"""What a chunk's images are, by content: the part of a chunk result's name that changes when
an image file is replaced.

Replacing a corrupt image with a good one (or any image with another) must re-snap exactly
the chunks that hold it, while a plain re-run of a finished job must not re-read every image.
So each image's identity is its size and a sha256 of its bytes, and the sha256 is computed
once per file version: a small JSON cache per chunk (``chunks/images-<chunk>.json``) maps
each path to ``[size, mtime_ns, ctime_ns, inode, sha256]`` and is trusted while all four are
unchanged. Size and mtime alone are not enough: a file replaced by another of the same size
with its mtime set back (``touch -d``, ``cp -p``, ``rsync -t``) would keep its old hash. The
ctime cannot be set from user space and changes on any write, rename or replacement, so the
check stays free (one ``stat``) and a replaced image is always hashed again.
One cache file per chunk, written only by the task that snaps that chunk, so chunks running
in parallel never write the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from snapper.atomic import atomic_write_json
from snapper.batch.image_work import leaves_folder, safe_image_path
from snapper.batch.rough import Chunk, RoughInput
from snapper.batch.schema import CHUNKS_DIR
from snapper.data.shards import sha256_file

CACHE_VERSION = 2  # 1 held [size, mtime_ns, sha256]: read as empty, hashed again


def cache_path(out_dir: str | os.PathLike[str], chunk: Chunk) -> Path:
    return Path(out_dir) / CHUNKS_DIR / f"images-{chunk.index:05d}.json"


def read_cache(path: Path) -> dict[str, list[Any]]:
    """``{path: [size, mtime_ns, ctime_ns, inode, sha256]}``; an unreadable or foreign cache is an empty one."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return {k: v for k, v in data["files"].items() if isinstance(v, list) and len(v) == 5}


def file_identity(path: Path | None, cache: dict[str, list[Any]], fresh: dict[str, list[Any]]) -> str:
    """``"<size>:<sha256>"`` of a regular file (sha256 from ``cache`` while size, mtime, ctime
    and inode match; recorded in ``fresh``), else what stands in for it: ``invalid`` (no usable name),
    ``missing`` or ``unreadable``. The last three also change when the file appears."""
    if path is None:
        return "invalid"
    key = str(path)
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    if not os.path.isfile(path):
        return "missing"
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    entry = cache.get(key)
    if entry is None or entry[:4] != stamp:
        try:
            entry = [*stamp, sha256_file(path)]
        except OSError as e:
            return f"unreadable:{e.errno}"
    fresh[key] = entry
    return f"{entry[0]}:{entry[4]}"


def images_fingerprint(inp: RoughInput, chunk: Chunk, out_dir: str | os.PathLike[str], follow_links: bool = False) -> str:
    """One digest over the identities of the chunk's images (in chunk order); updates the
    chunk's cache when a sha256 had to be computed or an entry is gone."""
    cache_file = cache_path(out_dir, chunk)
    cache = read_cache(cache_file)
    fresh: dict[str, list[Any]] = {}
    h = hashlib.sha256()
    for image_id in chunk.image_ids:
        im = inp.images.get(image_id) or {}
        image = safe_image_path(chunk.images_dir, im.get("file_name"))
        if image is not None and not follow_links and leaves_folder(chunk.images_dir, image):
            identity = "outside"  # never opened, so never hashed
        else:
            identity = file_identity(image, cache, fresh)
        h.update(json.dumps([image_id, identity]).encode())
    if fresh != cache:
        atomic_write_json(cache_file, {"version": CACHE_VERSION, "files": fresh}, indent=None)
    return h.hexdigest()[:16]
