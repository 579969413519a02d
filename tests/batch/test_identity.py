"""Image identities of a chunk: by content, hashed once per file version, cached per chunk."""

from __future__ import annotations

import json
import os
import shutil

from snapper import batch as B
from snapper.batch import identity


def test_fingerprint_follows_content_not_mtime_and_hashes_once(rough, tmp_path, monkeypatch):
    ann, images, _ = rough
    inp = B.load_rough(ann)
    chunk = B.plan_chunks(ann, images, 2)[1]  # images 3 (missing.jpg) and 4 (corrupt.jpg)
    out = tmp_path / "out"
    hashed = []
    real = identity.sha256_file
    monkeypatch.setattr(identity, "sha256_file", lambda p: hashed.append(str(p)) or real(p))
    first = identity.images_fingerprint(inp, chunk, out)
    assert hashed == [str(images / "corrupt.jpg")]  # the missing one has nothing to hash
    cache = json.loads(identity.cache_path(out, chunk).read_text())
    assert list(cache["files"]) == [str(images / "corrupt.jpg")]
    assert identity.images_fingerprint(inp, chunk, out) == first and len(hashed) == 1  # cached
    st = os.stat(images / "corrupt.jpg")
    os.utime(images / "corrupt.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert identity.images_fingerprint(inp, chunk, out) == first and len(hashed) == 2
    shutil.copy(images / "a.jpg", images / "missing.jpg")  # the missing image appears
    second = identity.images_fingerprint(inp, chunk, out)
    assert second != first
    shutil.copy(images / "b.jpg", images / "corrupt.jpg")  # another content
    assert identity.images_fingerprint(inp, chunk, out) not in (first, second)


def test_unusable_cache_is_rebuilt_and_names_stand_in_for_absent_files(rough, tmp_path):
    ann, images, _ = rough
    inp = B.load_rough(ann)
    chunk = B.plan_chunks(ann, images, 2)[1]
    out = tmp_path / "out"
    good = identity.images_fingerprint(inp, chunk, out)
    identity.cache_path(out, chunk).write_text("{not json")
    assert identity.images_fingerprint(inp, chunk, out) == good
    fresh: dict = {}
    assert identity.file_identity(None, {}, fresh) == "invalid"
    assert identity.file_identity(images / "nope.jpg", {}, fresh) == "missing"
    assert identity.file_identity(images, {}, fresh) == "missing" and not fresh  # a folder is no image
