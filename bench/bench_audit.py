"""Dataset-audit throughput against its limit: the batch snap it is built on.

``snapper audit`` is ``batch_snap`` of the annotated boxes (with ``AuditConfig``'s batch settings:
flip on) followed by scoring, ranking, ``audit.parquet``, ``review.csv`` and the contact sheet.
On ``../shared/data/coco128-train``'s annotated boxes, each measured twice into fresh folders
(best of two, model load included in both):

(a) limit: ``snapper.batch.batch_snap`` with the audit's batch settings, boxes per second;
(b) ``snapper.batch.audit.audit_dataset``, boxes per second; the ratio (b)/(a) is the share of the
    snap's throughput the whole audit keeps (target >= 0.9: scoring must not cost a tenth).

    .venv/bin/python bench/bench_audit.py [--model runs/adapt-champion/lite0/best] [--max-images N]

The model: a trained checkpoint when given (or the COCO champion of experiments/adapt.py when
present), else the ``cpu`` preset architecture untrained (its broken-box guard then keeps most
boxes unsnapped, so fewer are scored).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_snap import DATA, cpu_preset_model  # noqa: E402

from snapper.batch import batch_snap  # noqa: E402
from snapper.batch.audit import audit_dataset  # noqa: E402
from snapper.config import AuditConfig  # noqa: E402
from snapper.models.checkpoint import save_checkpoint  # noqa: E402
from snapper.models.net import build_model  # noqa: E402

CHAMPION = ROOT / "runs" / "adapt-champion" / "lite0" / "best"


def subset(ann: Path, out: Path, max_images: int | None) -> tuple[Path, int]:
    data = json.loads(ann.read_text())
    if max_images:
        data["images"] = data["images"][:max_images]
        keep = {im["id"] for im in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    out.write_text(json.dumps(data))
    return out, len(data["annotations"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-images", type=int, default=None)
    args = ap.parse_args(argv)
    if not (args.data / "annotations.json").is_file():
        print(f"bench_audit: {args.data / 'annotations.json'} not found; nothing to measure", file=sys.stderr)
        return 0
    cfg = AuditConfig()
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        t = Path(tmp)
        model = args.model or (str(CHAMPION) if (CHAMPION / "model.pt").is_file() else None)
        if model is None:
            torch.manual_seed(0)
            mcfg = cpu_preset_model()
            model = str(save_checkpoint(t / "ckpt", build_model(mcfg), mcfg))
        ann, n = subset(args.data / "annotations.json", t / "ann.json", args.max_images)
        times: dict[str, list[float]] = {"batch_snap": [], "audit": []}
        for k in range(2):
            for name, run in (("batch_snap", lambda o: batch_snap(ann, args.data / "images", o, model, cfg.batch)),
                              ("audit", lambda o: audit_dataset(ann, args.data / "images", o, model, cfg))):
                out = t / f"{name}-{k}"
                start = time.perf_counter()
                run(out)
                times[name].append(time.perf_counter() - start)
                shutil.rmtree(out)
    limit, audit = n / min(times["batch_snap"]), n / min(times["audit"])
    print(json.dumps({"model": model, "boxes": n, "flip": cfg.batch.snap.flip, "torch_threads": torch.get_num_threads(),
                      "batch_snap_boxes_per_s": round(limit, 1), "audit_boxes_per_s": round(audit, 1),
                      "wall_s": {k: [round(v, 2) for v in vs] for k, vs in times.items()},
                      "ratio_audit_vs_batch_snap": round(audit / limit, 3), "target": 0.9}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
