"""Sharding throughput next to its limit: reading the same image files and writing the same bytes.

    .venv/bin/python bench/bench_shard.py [--all] [--shard-size 64] [--workers 1] [--repeats 3]

For each dataset (``../shared/data/coco128-train``; ``--all`` adds coco-mini and tiny-coco) it
times, best of ``--repeats``, with the page cache warm for both sides:

* ``shard``: ``shard_dataset`` into a fresh temp dir (JSON validation, image header checks,
  tar writing with sha256, fsync per shard, manifest);
* ``copy``: the raw cost: read every image file and write the same bytes into one file per
  shard group, fsynced like a shard (no validation, no tar, no hashing).

``ratio`` = shard time / copy time (1.0 would mean sharding is free beyond the I/O).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snapper.data.coco import load_coco  # noqa: E402
from snapper.data.shards import shard_dataset  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def _copy(paths: list[str], out: Path, group: int) -> None:
    for n, i in enumerate(range(0, len(paths), group)):
        with open(out / f"copy-{n:06d}.bin", "wb") as f:
            for p in paths[i : i + group]:
                with open(p, "rb") as src:
                    f.write(src.read())
            f.flush()
            os.fsync(f.fileno())


def _best(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        d = Path(tempfile.mkdtemp(prefix="bench_shard_"))
        try:
            t = time.perf_counter()
            fn(d)
            times.append(time.perf_counter() - t)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="also coco-mini and tiny-coco")
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    names = ["coco128-train"] + (["coco-mini", "tiny-coco"] if args.all else [])
    rows = []
    for name in names:
        src = DATA / name
        ann, images = src / "annotations.json", src / "images"
        if not ann.exists():
            print(f"skip {name}: {ann} not found", file=sys.stderr)
            continue
        index = load_coco(ann, images)
        paths = [r.path for r in index.images]
        mb = sum(os.path.getsize(p) for p in paths) / 1e6
        _copy(paths, Path(tempfile.mkdtemp(prefix="bench_warm_")), len(paths))  # warm the page cache
        t_load = _best(lambda d: load_coco(ann, images), args.repeats)
        t_shard = _best(lambda d: shard_dataset(ann, images, d, shard_size=args.shard_size, workers=args.workers),
                        args.repeats)
        t_copy = _best(lambda d: _copy(paths, d, args.shard_size), args.repeats)
        rows.append((name, len(paths), mb, t_load, t_shard, t_copy))
    print(f"shard_size={args.shard_size} workers={args.workers} best of {args.repeats}, warm page cache, "
          f"{os.cpu_count()} CPUs")
    print(f"{'dataset':<14}{'images':>7}{'MB':>7}{'load s':>8}{'shard s':>9}{'img/s':>8}{'MB/s':>8}"
          f"{'copy s':>8}{'copy MB/s':>10}{'ratio':>7}")
    for name, n, mb, t_load, t_shard, t_copy in rows:
        print(f"{name:<14}{n:>7}{mb:>7.1f}{t_load:>8.3f}{t_shard:>9.3f}{n / t_shard:>8.0f}{mb / t_shard:>8.0f}"
              f"{t_copy:>8.3f}{mb / t_copy:>10.0f}{t_shard / t_copy:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
