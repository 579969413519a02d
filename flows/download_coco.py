"""Download MS-COCO 2017 (images + instances annotations) for real training/evaluation.

    python -m flows.download_coco data/coco                 # annotations + val2017 (~1 GB)
    python -m flows.download_coco data/coco --train         # + train2017 (~18 GB)

Then shard it (``python -m flows.shard data/coco/annotations/instances_val2017.json
data/coco/val2017 shards/coco-val2017 --split val``) or let ``train-snapper/coco-gpu`` do it.
Uses the official URLs and their published MD5 checksums; an archive already present and
intact is not downloaded again. Needs network access: never called by tests or CI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# (url, md5) from cocodataset.org; the md5s are the ones published with the 2017 release.
ARCHIVES: dict[str, tuple[str, str]] = {
    "annotations": ("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                    "f4bbac642086de4f52a3fdda2de5fa2c"),
    "val2017": ("http://images.cocodataset.org/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"),
    "train2017": ("http://images.cocodataset.org/zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2"),
}


def download_coco(root: str | Path, parts: tuple[str, ...] = ("annotations", "val2017")) -> dict[str, Path]:
    """Download and extract ``parts`` of COCO 2017 under ``root``; returns where each landed."""
    from torchvision.datasets.utils import download_and_extract_archive

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    unknown = [p for p in parts if p not in ARCHIVES]
    if unknown:
        raise ValueError(f"unknown COCO part(s) {unknown}; choose from {sorted(ARCHIVES)}")
    out: dict[str, Path] = {}
    for part in parts:
        url, md5 = ARCHIVES[part]
        target = root / part
        if target.is_dir() and any(target.iterdir()):
            out[part] = target
            continue
        download_and_extract_archive(url, download_root=str(root / "archives"), extract_root=str(root), md5=md5)
        out[part] = target
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.download_coco", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default="data/coco")
    ap.add_argument("--train", action="store_true", help="also download train2017 (~18 GB)")
    a = ap.parse_args(argv)
    parts = ("annotations", "val2017", "train2017") if a.train else ("annotations", "val2017")
    for part, path in download_coco(a.root, parts).items():
        print(f"{part}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
