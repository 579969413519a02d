"""One atomic writer: whole file or nothing, unique temp names, shared permissions."""

from __future__ import annotations

import os
import stat
import threading

import pandas as pd
import pytest

from snapper.atomic import (
    atomic_open,
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_text,
    atomic_write_with,
    is_temp_file,
)


def test_writes_land_whole_with_0644(tmp_path) -> None:
    old = os.umask(0o077)
    try:
        p = atomic_write_text(tmp_path / "sub" / "a.txt", "hello")
        atomic_write_json(tmp_path / "b.json", {"x": 1})
        atomic_write_parquet(pd.DataFrame({"a": [1, 2]}), tmp_path / "c.parquet")
        atomic_write_csv(pd.DataFrame({"a": [1]}), tmp_path / "d.csv")
        atomic_torch_save({"k": 1}, tmp_path / "e.pt")
    finally:
        os.umask(old)
    assert p.read_text() == "hello"
    assert pd.read_parquet(tmp_path / "c.parquet")["a"].tolist() == [1, 2]
    for f in ("sub/a.txt", "b.json", "c.parquet", "d.csv", "e.pt"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == 0o644, f
    assert not [f for f in tmp_path.rglob("*") if is_temp_file(f)]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def boom(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, boom)
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_concurrent_writers_of_one_path_never_mix(tmp_path) -> None:
    target = tmp_path / "x.txt"
    payloads = [str(i) * 100_000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write_text, args=(target, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_text() in payloads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_only_write_modes() -> None:
    with pytest.raises(ValueError, match="writes only"):
        with atomic_open("x", "r"):
            pass
