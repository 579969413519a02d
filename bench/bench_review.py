"""``snapper review push`` / ``pull`` against their limit: Label Studio's own API doing the same.

Both commands are a few REST calls around one bulk request: push's import of every task in one
``POST /api/projects/{id}/import``, pull's export of the project in one ``GET .../export``.
Their limit is that bulk request alone, sent by hand with the same payload to the same server:

(a) push (``snapper.review.push.push`` into a new project: find/create the project, add the
    local-files storage, plan the tasks from the batch folder, import) vs the bare import of the
    same planned tasks into another new project; ratio (a) / bare;
(b) pull (``snapper.review.pull.pull``: export, match every annotation, write ``review/``) vs
    the bare export of the same project; ratio (b) / bare.

A ratio near 1 means the command costs what Label Studio's API costs. Each measured twice (fresh
projects, fresh review folders); best of two. The batch folder: ``batch_snap`` of
``../shared/data/coco128-train`` with jittered boxes and a review budget (not timed), with the
COCO champion of experiments/adapt.py when present, else the cpu preset untrained. Label Studio
from ``$LS_VENV`` (``make labelstudio`` installs it), on loopback with its own fresh database.

    .venv/bin/python bench/bench_review.py [--max-images N] [--budget 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "experiments"))

from bench_snap import DATA, cpu_preset_model, write_rough  # noqa: E402

from snapper.batch import batch_snap  # noqa: E402
from snapper.config import BatchConfig  # noqa: E402
from snapper.integrations.labelstudio_api import LabelStudioClient  # noqa: E402
from snapper.models.checkpoint import save_checkpoint  # noqa: E402
from snapper.models.net import build_model  # noqa: E402
from snapper.review.pull import pull  # noqa: E402
from snapper.review.push import plan_tasks, push  # noqa: E402
from snapper.review.tasks import MODEL_VERSION, label_config, label_names, load_batch_output  # noqa: E402

CHAMPION = ROOT / "runs" / "adapt-champion" / "lite0" / "best"


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--budget", type=float, default=0.2, help="batch-snap --review-budget (share of edges)")
    args = ap.parse_args(argv)
    from labelstudio_e2e import LS_VENV, label_studio

    if not (args.data / "annotations.json").is_file() or not (LS_VENV / "bin" / "label-studio").exists():
        print(f"bench_review: needs {args.data / 'annotations.json'} and Label Studio in {LS_VENV}; nothing to "
              "measure", file=sys.stderr)
        return 0
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        t = Path(tmp)
        model = str(CHAMPION) if (CHAMPION / "model.pt").is_file() else None
        if model is None:
            torch.manual_seed(0)
            model = str(save_checkpoint(t / "ckpt", build_model(cpu_preset_model()), cpu_preset_model()))
        n = write_rough(args.data / "annotations.json", t / "rough.json", max_images=args.max_images)
        out, images = t / "out", args.data / "images"
        batch_snap(t / "rough.json", images, out, model, BatchConfig(review_budget=args.budget))
        token = secrets.token_hex(20)
        os.environ["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] = str(images.parent)
        with label_studio(t, token, files_root=images.parent) as url:
            client = LabelStudioClient(url, token)
            batch = load_batch_output(out)
            tasks, _ = plan_tasks(batch, images, None)
            config = label_config(sorted(set(label_names(batch.data.get("categories") or []).values())))
            times: dict[str, list[float]] = {k: [] for k in ("push", "import", "pull", "export")}

            def push_cmd(title: str):  # what `snapper review push` runs: the folder read, then the push
                return push(load_batch_output(out), images, client, title)

            def pull_cmd(title: str):
                return pull(load_batch_output(out), client, title)

            for k in range(2):
                title = f"bench push {k}"
                dt, res = timed(partial(push_cmd, title))
                times["push"].append(dt)
                bare = client.create_project(f"bench bare {k}", config, prelabel_with=MODEL_VERSION)
                times["import"].append(timed(partial(client.import_tasks, bare["id"], list(tasks.values())))[0])
                times["pull"].append(timed(partial(pull_cmd, title))[0])
                times["export"].append(timed(partial(client.export, res.project_id))[0])
    best = {k: min(v) for k, v in times.items()}
    boxes = sum(map(len, res.imported.values()))
    print(json.dumps({
        "annotations": n, "tasks": len(tasks), "boxes_pushed": boxes, "model": model if model == str(CHAMPION) else "untrained",
        "seconds_best_of_2": {k: round(v, 3) for k, v in best.items()},
        "push_vs_bare_import": round(best["push"] / best["import"], 2),
        "pull_vs_bare_export": round(best["pull"] / best["export"], 2),
        "pull_annotations_per_s": round(n / best["pull"], 1)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
