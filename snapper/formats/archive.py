"""Zip archives of annotation folders (Pascal VOC, YOLO, several COCO files): how a folder
travels through a one-file channel such as the inbox, where a file appears by one atomic
rename but a folder would be seen half-copied.

Unpacking trusts nothing in the archive: member names that are absolute, contain ``..`` or a
backslash, or are links are refused (never written outside the destination), and the declared
sizes are capped (:data:`MAX_BYTES` in all, :data:`MAX_MEMBER_BYTES` per member,
:data:`MAX_MEMBERS`) and so is each member's compression ratio (:data:`MAX_RATIO`: annotation
files compress 5-30x, a zip bomb 1000x) before anything is written, so a zip bomb is refused
instead of filling the disk or the memory of whatever parses it. Python's ``zipfile`` stops each member at its
declared size and checks its CRC, so a member cannot outgrow what was checked.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from snapper.formats.common import FormatError

MAX_BYTES = 4 << 30  # uncompressed, all members together
MAX_MEMBER_BYTES = 2 << 30  # one member (COCO's largest annotation file is ~0.45 GiB)
MAX_MEMBERS = 1_000_000
MAX_RATIO = 200  # uncompressed / compressed size of one member above RATIO_FROM bytes
RATIO_FROM = 1 << 20


def _member_path(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath | None:
    """The member's relative path, None for a directory entry; FormatError for an unsafe one."""
    name = info.filename
    if "\\" in name or "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise FormatError(f"{archive}: member {name!r} is not a relative path; refused")
    rel = PurePosixPath(name)
    if ".." in rel.parts:
        raise FormatError(f"{archive}: member {name!r} leaves the archive's folder; refused")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise FormatError(f"{archive}: member {name!r} is a symbolic link; refused")
    if info.is_dir():
        return None
    return rel


def _check_member_size(info: zipfile.ZipInfo, archive: Path) -> None:
    if info.file_size > MAX_MEMBER_BYTES:
        raise FormatError(f"{archive}: member {info.filename!r} is {info.file_size} bytes uncompressed, over the "
                          f"limit of {MAX_MEMBER_BYTES}; refused")
    if info.file_size > RATIO_FROM and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise FormatError(f"{archive}: member {info.filename!r} expands {info.file_size / max(info.compress_size, 1):.0f}x "
                          f"({info.compress_size} -> {info.file_size} bytes), over the limit of {MAX_RATIO}x "
                          "for an annotation file (a zip bomb?); refused")


def unpack(archive: str | os.PathLike[str], dest: str | os.PathLike[str], max_bytes: int = MAX_BYTES,
           max_members: int = MAX_MEMBERS) -> Path:
    """Unpack ``archive`` into ``dest`` (replaced as a whole, so a re-run of the same archive
    gives the same folder) and return the folder to read: the archive's single top-level
    folder when it has one and nothing else (``zip -r x.zip Annotations/``), else ``dest``.
    Bad archives raise :class:`FormatError` naming the archive and the member."""
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise FormatError(f"{archive}: not a readable zip archive ({e})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise FormatError(f"{archive}: {len(infos)} members, over the limit of {max_members}; refused")
        members = [(info, rel) for info in infos if (rel := _member_path(info, archive)) is not None]
        total = sum(info.file_size for info, _ in members)
        if total > max_bytes:
            raise FormatError(f"{archive}: {total} bytes uncompressed, over the limit of {max_bytes}; refused")
        for info, _ in members:
            _check_member_size(info, archive)
        if not members:
            raise FormatError(f"{archive}: the archive holds no files")
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for info, rel in members:
                target = tmp.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                except (zipfile.BadZipFile, OSError, EOFError) as e:  # CRC, truncation, bad compression
                    raise FormatError(f"{archive}: member {info.filename!r} is unreadable ({e})") from None
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    tops = {rel.parts[0] for _, rel in members}
    only = dest / next(iter(tops))
    return only if len(tops) == 1 and only.is_dir() else dest
