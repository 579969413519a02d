"""The one way this project writes an output file: to a unique temp file beside it, then
``os.replace`` into place.

Readers see the old file or the whole new one, never half of it, and a killed job leaves no
partial output under the final name. Temp names are unique (``mkstemp``), so two writers of
the same path (two flow retries, two threads) cannot clobber each other's temp file; the
last rename wins with a complete file. Outputs are 0644 (``mkstemp`` makes files private;
outputs are meant to be shared like every other file the project writes).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

TMP_SUFFIX = ".tmp"  # temp files are ".<name>.<random>.tmp" in the target's folder
FILE_MODE = 0o644


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[str], Any], fsync: bool = True) -> Path:
    """Call ``write(tmp_path)`` on a fresh temp file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            _fsync(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """``with atomic_open(p) as f: ...``: a streaming write that lands whole or not at all."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes only ('wb' or 'w'), got mode {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike[str], obj: Any, **dumps_kwargs: Any) -> Path:
    dumps_kwargs.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    import torch  # heavy; only the callers that save tensors pay for it

    return atomic_write_with(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_parquet(df: Any, path: str | os.PathLike[str]) -> Path:
    """A pandas DataFrame as Parquet (no index column)."""
    return atomic_write_with(path, lambda tmp: df.to_parquet(tmp, index=False))


def atomic_write_csv(df: Any, path: str | os.PathLike[str]) -> Path:
    return atomic_write_text(path, df.to_csv(index=False))


def is_temp_file(path: str | os.PathLike[str]) -> bool:
    """A leftover of a killed writer (safe to delete when no writer runs)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TMP_SUFFIX)
