"""Zipped annotation folders: unpacked safely, then snapped like the folder itself."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from snapper.formats import voc
from snapper.formats.archive import unpack
from snapper.formats.common import FormatError
from tests.formats.data import base_coco


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_one_top_level_folder_is_the_folder_to_read(tmp_path):
    voc.write(base_coco(), None, tmp_path / "Annotations")
    arc = tmp_path / "voc.zip"
    with zipfile.ZipFile(arc, "w") as z:
        for p in sorted((tmp_path / "Annotations").iterdir()):
            z.write(p, f"Annotations/{p.name}")
    got = unpack(arc, tmp_path / "out" / "input")
    assert got == tmp_path / "out" / "input" / "Annotations"
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in (tmp_path / "Annotations").iterdir())
    assert (got / "a.xml").read_bytes() == (tmp_path / "Annotations" / "a.xml").read_bytes()
    # files at the top: the destination itself; a re-run replaces it as a whole
    flat = _zip(tmp_path / "flat.zip", {"a.txt": b"0 0.5 0.5 0.2 0.2\n", "classes.txt": b"car\n"})
    assert unpack(flat, tmp_path / "out" / "input") == tmp_path / "out" / "input"
    assert sorted(p.name for p in (tmp_path / "out" / "input").iterdir()) == ["a.txt", "classes.txt"]


@pytest.mark.parametrize("name, words", [
    ("../evil.xml", "leaves the archive's folder"),
    ("a/../../evil.xml", "leaves the archive's folder"),
    ("/etc/evil.xml", "not a relative path"),
    ("C:/evil.xml", "not a relative path"),
    ("a\\..\\evil.xml", "not a relative path"),
])
def test_unsafe_member_names_are_refused_and_nothing_is_written(tmp_path, name, words):
    arc = _zip(tmp_path / "bad.zip", {"ok.xml": b"<annotation/>", name: b"x"})
    with pytest.raises(FormatError, match=f"bad.zip: member .* {words}"):
        unpack(arc, tmp_path / "out" / "input")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.xml").exists()


def test_links_bombs_and_non_zips_are_refused(tmp_path):
    arc = tmp_path / "link.zip"
    with zipfile.ZipFile(arc, "w") as z:
        info = zipfile.ZipInfo("link.xml")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    with pytest.raises(FormatError, match="link.xml' is a symbolic link"):
        unpack(arc, tmp_path / "o")
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.txt", b"\0" * (1 << 20))
    with pytest.raises(FormatError, match=r"bomb.zip: 1048576 bytes uncompressed, over the limit of 1000"):
        unpack(bomb, tmp_path / "o", max_bytes=1000)
    (tmp_path / "not.zip").write_text("plain text")
    with pytest.raises(FormatError, match="not.zip: not a readable zip archive"):
        unpack(tmp_path / "not.zip", tmp_path / "o")
    with pytest.raises(FormatError, match="empty.zip: the archive holds no files"):
        unpack(_zip(tmp_path / "empty.zip", {"dir/": b""}), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_a_corrupt_member_names_itself(tmp_path):
    arc = _zip(tmp_path / "crc.zip", {"a.xml": b"<annotation>" + b"x" * 200 + b"</annotation>"})
    data = bytearray(arc.read_bytes())
    i = data.index(b"xxxx")
    data[i:i + 4] = b"yyyy"  # stored, not deflated: the CRC no longer matches
    arc.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="crc.zip: member 'a.xml' is unreadable"):
        unpack(arc, tmp_path / "o")
    assert not (tmp_path / "o").exists()
