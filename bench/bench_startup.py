"""Cold-start cost of ``snapper snap``: one box from a fresh process, and where the time goes.

A one-box ``snapper snap`` (the interactive case: a script, a notebook cell, a CI check) is
dominated by start-up, not by the model. Measured, each in fresh processes (median of
``--repeats``):

(a) limit: ``python -c "import torch, torchvision"``: what any PyTorch program pays first;
(b) ``import snapper.cli.snap``: the command's imports (must not include MLflow);
(c) ``snapper snap IMAGE --box ... --model FOLDER``: the whole command on one box of a real
    photo with a folder checkpoint of the ``cpu`` preset's architecture (Lite0, 128 px), and
    where its time went (``snapper snap -v`` of one more run: imports since the process
    started, model lookup and load, snapping);
(d) warm: the same box snapped again in a process that has the model loaded
    (``Snapper.snap`` from the file, median after a first call), what a server or a notebook
    pays per box;

and reports ``snap_vs_torch_import`` = (c)/(a) (target < 2), the import share (b)/(c) and
``cold_vs_warm`` = (c)/(d). ``bench/bench_snap.py --cold`` adds (c) and (d) to its report.
``python -X importtime`` lists the slowest imports of (b) when ``--importtime`` is given.

    .venv/bin/python bench/bench_startup.py [--repeats 5] [--importtime]

Uses ``../shared/data/coco128-train`` for the photo when present, else a generated JPEG.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snapper.config import ModelConfig  # noqa: E402
from snapper.inference.snap import Snapper  # noqa: E402
from snapper.models.checkpoint import save_checkpoint  # noqa: E402
from snapper.models.net import build_model  # noqa: E402
from snapper.training.presets import PRESETS  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "coco128-train"


def photo_and_box(tmp: Path) -> tuple[Path, list[float]]:
    """A real photo and one of its boxes, or a generated one."""
    if (DATA / "annotations.json").is_file():
        coco = json.loads((DATA / "annotations.json").read_text())
        ann = next(a for a in coco["annotations"] if not a.get("iscrowd") and min(a["bbox"][2:]) > 40)
        image = next(im for im in coco["images"] if im["id"] == ann["image_id"])
        return DATA / "images" / image["file_name"], [float(v) for v in ann["bbox"]]
    arr = (np.random.default_rng(0).random((480, 640, 3)) * 60).astype(np.uint8)
    arr[100:300, 150:450] = (200, 120, 40)
    path = tmp / "photo.jpg"
    Image.fromarray(arr).save(path, quality=90)
    return path, [140.0, 95.0, 320.0, 210.0]


def timed(cmd: list[str], repeats: int, env: dict[str, str]) -> float:
    """Median wall seconds of ``cmd`` in fresh processes (one untimed run first: disk cache)."""
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _phases(stderr: str) -> dict[str, float]:
    """``snapper snap -v``'s table (stderr) as {phase: seconds}."""
    rows = [re.fullmatch(r"  (.+?) +([0-9.]+) s(?: +[0-9.]+%)?", line) for line in stderr.splitlines()]
    return {m.group(1): float(m.group(2)) for m in rows if m}


def cold_and_warm(image: Path, box: list[float], ckpt: Path, repeats: int, env: dict[str, str]) -> dict:
    """One box from a fresh ``snapper snap`` process (median wall seconds, and the command's
    own ``-v`` breakdown of one more run) next to the same box warm: in this process with the
    model loaded, from the file, median of ``repeats`` after a first call."""
    cmd = [sys.executable, "-m", "snapper.cli", "snap", str(image), "--box", ",".join(f"{v:g}" for v in box),
           "--model", str(ckpt), "--device", "cpu"]
    cold = timed(cmd, repeats, env)
    verbose = subprocess.run([*cmd, "-v"], check=True, capture_output=True, text=True, env=env)
    snapper = Snapper.from_checkpoint(ckpt, device="cpu")
    threads = torch.get_num_threads()  # what the command ran with
    warm: dict[int, float] = {}
    for n in sorted({threads, 1}, reverse=True):  # and one thread: a busy machine punishes more
        torch.set_num_threads(n)
        snapper.snap(image, [box])  # the first call sets up the kernels
        times = []
        for _ in range(max(repeats, 3)):
            t = time.perf_counter()
            snapper.snap(image, [box])
            times.append(time.perf_counter() - t)
        warm[n] = statistics.median(times)
    torch.set_num_threads(threads)
    return {"snap_one_box_cold_s": round(cold, 3), "cold_phases_s": _phases(verbose.stderr),
            "snap_one_box_warm_s": {f"{n}_torch_threads": round(v, 4) for n, v in warm.items()},
            "cold_vs_warm": round(cold / warm[threads], 1)}


def slowest_imports(env: dict[str, str], n: int = 8) -> list[tuple[str, float]]:
    """The packages (first-level names, and snapper's own modules) that cost most in
    ``import snapper.cli.snap``: cumulative seconds, from ``python -X importtime``."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import snapper.cli.snap"],
                         capture_output=True, text=True, env=env).stderr
    rows: dict[str, float] = {}
    for line in out.splitlines()[1:]:
        parts = line.split("|")
        if len(parts) != 3:
            continue
        name = parts[2].strip()
        if ("." not in name or name.startswith("snapper.")) and name != "snapper.cli.snap":
            rows[name] = max(rows.get(name, 0.0), int(parts[1]) / 1e6)
    return sorted(((k, round(v, 3)) for k, v in rows.items()), key=lambda r: -r[1])[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--importtime", action="store_true", help="also list the slowest imports")
    args = ap.parse_args()
    env = {**os.environ, "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        cfg = ModelConfig(**{**PRESETS["cpu"]["model"], "weights": None})
        ckpt = save_checkpoint(tmp / "ckpt", build_model(cfg), cfg)
        image, box = photo_and_box(tmp)
        torch_s = timed([py, "-c", "import torch, torchvision"], args.repeats, env)
        import_s = timed([py, "-c", "import snapper.cli.snap, sys; assert 'mlflow' not in sys.modules"],
                         args.repeats, env)
        one_box = cold_and_warm(image, box, ckpt, args.repeats, env)
        snap_s = one_box["snap_one_box_cold_s"]
        report = {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "image": image.name, "box": box, "repeats": args.repeats,
            "torch_import_s": round(torch_s, 3),
            "snap_cli_imports_s": round(import_s, 3),
            **one_box,
            "snap_vs_torch_import": round(snap_s / torch_s, 2),
            "target_snap_vs_torch_import": "< 2",
            "import_share": round(import_s / snap_s, 2),
        }
        if args.importtime:
            report["slowest_imports_s"] = slowest_imports(env)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
