"""``snapper shard ANN_JSON IMAGES_DIR OUT_DIR``: a COCO dataset as WebDataset shards + manifest,
optionally with a ``val`` split held out by image (``--val-fraction``)."""

from __future__ import annotations

import argparse

from snapper.cli.common import fraction, non_negative_float, positive_int, run
from snapper.config import SHARD_MIN_BOX_SIZE
from snapper.data.coco import load_coco
from snapper.data.manifest import Manifest
from snapper.data.shards import DEFAULT_SHARD_SIZE, hold_out, shard_index

PROG = "snapper shard"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Write a COCO dataset as WebDataset shards + manifest.")
    p.add_argument("ann_json")
    p.add_argument("images_dir")
    p.add_argument("out_dir", help="e.g. shards/<dataset>")
    p.add_argument("--split", default="train", help="split name (the training part when --val-fraction is set)")
    p.add_argument("--shard-size", type=positive_int, default=DEFAULT_SHARD_SIZE, help="images per shard")
    p.add_argument("--val-fraction", type=fraction, default=0.0, help="hold out this fraction of images as split 'val'")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val hold-out")
    p.add_argument("--min-box-size", type=non_negative_float, default=SHARD_MIN_BOX_SIZE,
                   help="skip boxes narrower/shorter than this (px)")
    p.add_argument("--workers", type=int, default=1, help="processes writing shards (<= 1: this one)")
    p.add_argument("--check-images", choices=("header", "decode", "none"), default="header")
    p.add_argument("--verify", action="store_true", help="re-hash existing shards before reusing them")
    return p


def summary(m: Manifest) -> str:
    """What was written, reused and skipped, in a few lines."""
    c = m.counts
    lines = [
        f"[{m.data['split']}] {c['images']} images, {c['boxes']} boxes (+{c['crowd']} crowd kept, excluded from "
        f"training), {c['shards']} shards ({len(m.written)} written, {c['shards'] - len(m.written)} up to date), "
        f"{c['bytes'] / 1e6:.1f} MB -> {m.path}",
        f"  annotations: {c['annotations_input']} in = {c['annotations_kept']} kept + {c['annotations_skipped']} "
        f"skipped; {c['clipped']} clipped to the image (kept)",
    ]
    if m.skip_counts:
        lines.append("  skipped annotations: " + ", ".join(f"{k}={v}" for k, v in m.skip_counts.items()))
    if m.data["image_skip_counts"]:
        lines.append("  skipped images: " + ", ".join(f"{k}={v}" for k, v in m.data["image_skip_counts"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.val_fraction > 0 and args.split == "val":
        p.error("--split must not be 'val' when --val-fraction is set")

    def body() -> int:
        index = load_coco(args.ann_json, args.images_dir, args.min_box_size, args.check_images)
        jobs, params = hold_out(index, args.split, args.val_fraction, args.seed)
        for split, ids in jobs:
            m = shard_index(index, args.out_dir, split, args.shard_size, args.workers, ids, params, args.verify)
            print(summary(m))
        return 0

    return run(PROG, body)  # a shard that cannot be written is a ShardError naming it: one line


if __name__ == "__main__":
    raise SystemExit(main())
