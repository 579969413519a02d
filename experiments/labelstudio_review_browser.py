"""Review in a real browser: doubtful boxes pushed to Label Studio, one edge fixed with the mouse,
the fix pulled back as gold.

    .venv/bin/python experiments/labelstudio_review_browser.py --model runs/adapt-champion/lite0/best [--upload]

What a reviewer does, driven through headless Chromium (Playwright), on a ``batch-snap`` output
of a few COCO photos with jittered rough boxes: ``snapper review push`` (the CLI), log in to Label
Studio, open the first task (the snapped boxes to check are pre-filled from the prediction, the
note above the photo names the doubtful edges), select the first box on the photo, drag its
left edge :data:`DRAG_PX` screen pixels to the right, submit; then ``snapper review pull`` (the
CLI) and the checks: that box is ``corrected`` in ``gold.json``, its left edge moved by the
dragged distance in image pixels and its other three edges within 1 px of the snapped box; the
task's other boxes ``confirmed``; every annotation of the batch accounted for.

Needs what ``labelstudio_e2e.py`` installs (Label Studio and Playwright in ``$LS_VENV``) and a
Chromium. ``--upload``: the images are uploaded into the project (``review push --upload``)
instead of served from Label Studio's local-files storage. Writes
``experiments/results/labelstudio-review-browser/`` (``-upload/``) (result.json, screenshots
``task.jpg`` before the edit and ``edited.jpg`` after it; ``failure.jpg`` when the browser part fails).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "coco-mini"
PHOTOS = ("000000252639.jpg", "000000493652.jpg", "000000030752.jpg")
USER, PASSWORD = "reviewer@example.com", "snapper-review"
DRAG_PX = 12  # screen pixels the left edge is dragged to the right


# ------------------------------------------------------------------ the browser (LS venv)


def drive(job: dict) -> dict:
    """Runs in Label Studio's venv (Playwright lives there, not in the project's)."""
    from playwright.sync_api import sync_playwright

    out = Path(job["out"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=job["chromium"], args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            return _review(page, job, out)
        except Exception:
            page.screenshot(path=str(out / "failure.jpg"), quality=80)
            raise
        finally:
            browser.close()


def _review(page, job: dict, out: Path) -> dict:
    # this script's folder is on sys.path (it runs as a script in Label Studio's venv)
    from labelstudio_browser import open_task

    open_task(page, job["base"], USER, PASSWORD, job["project"], job["task"])
    page.wait_for_timeout(2000)
    photos = page.locator("img")  # the largest: the labelling view's photo
    bb = max((photos.nth(i).bounding_box() for i in range(photos.count())),
             key=lambda b: b["width"] * b["height"] if b else 0)
    sx, sy = bb["width"] / job["width"], bb["height"] / job["height"]
    x, y, w, h = job["box"]  # the box to fix, image pixels
    page.screenshot(path=str(out / "task.jpg"), quality=80)
    page.mouse.click(bb["x"] + (x + w / 2) * sx, bb["y"] + (y + h / 2) * sy)  # select it
    page.wait_for_timeout(500)
    edge = (bb["x"] + x * sx, bb["y"] + (y + h / 2) * sy)  # the transformer's middle-left anchor
    page.mouse.move(*edge)
    page.mouse.down()
    for k in range(1, 7):
        page.mouse.move(edge[0] + DRAG_PX * k / 6, edge[1])
    page.mouse.up()
    page.wait_for_timeout(500)
    page.screenshot(path=str(out / "edited.jpg"), quality=80)
    page.get_by_label("Submit current annotation").click()
    page.wait_for_timeout(1500)
    return {"scale": sx, "dragged_image_px": DRAG_PX / sx, "note": page.locator(".lsf-richtext, h5").first.inner_text()
            if page.locator("h5").count() else None}


# ------------------------------------------------------------------ the scenario (.venv)


def _batch(tmp: Path, model: str) -> tuple[Path, Path]:
    """A batch-snap output of :data:`PHOTOS` with seeded jittered rough boxes (the CLI)."""
    import numpy as np

    coco = json.loads((DATA / "annotations.json").read_text())
    images = [im for im in coco["images"] if im["file_name"] in PHOTOS]
    ids = {im["id"] for im in images}
    rng = np.random.default_rng(0)
    anns = []
    for a in coco["annotations"]:
        if a["image_id"] in ids:
            x, y, w, h = a["bbox"]
            dx, dy, sw, sh = rng.uniform(-0.08, 0.08, 4)
            anns.append({**a, "bbox": [x + dx * w, y + dy * h, w * (1 + sw), h * (1 + sh)]})
    rough = tmp / "rough.json"
    rough.write_text(json.dumps({**coco, "images": images, "annotations": anns}))
    out = tmp / "out"
    subprocess.run([sys.executable, "-m", "snapper.cli", "batch-snap", str(rough), str(DATA / "images"), str(out),
                    "--model", model, "--review-budget", "0.1"], check=True, cwd=ROOT)
    return out, DATA / "images"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("SNAPPER_MODEL", "models:/snapper@champion"))
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--out", type=Path, default=None,
                   help="default experiments/results/labelstudio-review-browser[-upload]")
    p.add_argument("--upload", action="store_true", help="push with --upload (images into the project) instead of "
                                                         "Label Studio's local-files storage")
    args = p.parse_args()
    args.out = args.out or ROOT / "experiments" / "results" / ("labelstudio-review-browser" + ("-upload" if args.upload else ""))
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # here, not at the top: --drive runs without torch
    from labelstudio_e2e import LS_VENV, label_studio

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failure.jpg").unlink(missing_ok=True)
    token = secrets.token_hex(20)
    project = "doubtful boxes"
    with tempfile.TemporaryDirectory(prefix="ls-review-") as tmp:
        tmp_p = Path(tmp)
        out, images = _batch(tmp_p, args.model)
        env = {**os.environ, "LABEL_STUDIO_API_KEY": token, "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(DATA)}
        with label_studio(tmp_p, token, files_root=DATA, username=USER, password=PASSWORD) as url:
            cli = [sys.executable, "-m", "snapper.cli", "review"]
            push = subprocess.run([*cli, "push", str(out), "--images", str(images), "--project", project,
                                   "--label-studio", url, *(["--upload"] if args.upload else [])], env=env, cwd=ROOT, capture_output=True, text=True, check=False)
            assert push.returncode == 0, push.stderr
            s = requests.Session()
            s.headers["Authorization"] = f"Token {token}"
            pid = s.get(f"{url}/api/projects").json()["results"][0]["id"]
            tasks = s.get(f"{url}/api/projects/{pid}/export",
                          params={"exportType": "JSON", "download_all_tasks": "true"}).json()
            task = min(tasks, key=lambda t: t["id"])
            snapped = {a["id"]: a for a in json.loads((out / "snapped.json").read_text())["annotations"]}
            target = task["data"]["snapper_boxes"][0]
            im = next(i for i in json.loads((out / "snapped.json").read_text())["images"]
                      if i["id"] == task["data"]["snapper_image_id"])
            job = {"base": url, "project": pid, "task": task["id"], "width": im["width"], "height": im["height"],
                   "box": snapped[target]["bbox"], "chromium": args.chromium, "out": str(args.out)}
            driven = subprocess.run([str(LS_VENV / "bin" / "python"), __file__, "--drive", json.dumps(job)],
                                    capture_output=True, text=True, timeout=600, check=False)
            if driven.returncode:
                raise RuntimeError(f"the browser part failed:\n{driven.stderr[-4000:]}")
            seen = json.loads(driven.stdout.strip().splitlines()[-1])
            pull = subprocess.run([*cli, "pull", str(out), "--project", project, "--label-studio", url], env=env,
                                  cwd=ROOT, capture_output=True, text=True, check=False)
            assert pull.returncode == 0, pull.stderr
        gold = {a["id"]: a for a in json.loads((out / "review" / "gold.json").read_text())["annotations"]}
        summary = json.loads((out / "review" / "pull.json").read_text())
        table = {int(k): v for k, v in zip(*_statuses(out))}
    before, after = snapped[target]["bbox"], gold[target]["bbox"]
    edges = {"left": after[0] - before[0], "top": after[1] - before[1],
             "right": after[0] + after[2] - before[0] - before[2], "bottom": after[1] + after[3] - before[1] - before[3]}
    others = [table[i] for i in task["data"]["snapper_boxes"][1:]]
    result = {"push": push.stdout.strip().splitlines(), "pull": pull.stdout.strip().splitlines(),
              "pull_warnings": pull.stderr.strip().splitlines(), "task": task["id"], "box": target,
              "task_note": task["data"]["snapper_note"], "snapped_bbox": before, "gold_bbox": after,
              "edge_moves_px": {k: round(v, 2) for k, v in edges.items()},
              "dragged_image_px": round(seen["dragged_image_px"], 2), "status": table[target],
              "other_boxes_of_task": others, "counts": summary["counts"], "annotations": summary["annotations"]}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    assert table[target] == "corrected", table[target]
    assert abs(edges["left"] - seen["dragged_image_px"]) <= 2.0, edges
    assert all(abs(edges[k]) <= 1.0 for k in ("top", "right", "bottom")), edges
    assert all(o == "confirmed" for o in others), others
    assert sum(summary["counts"].values()) == summary["annotations"]
    return 0


def _statuses(out: Path) -> tuple[list, list]:
    import pandas as pd

    df = pd.read_parquet(out / "review" / "review.parquet")
    return list(df["annotation_id"]), list(df["status"])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--drive":  # in Label Studio's venv: Playwright, no torch
        print(json.dumps(drive(json.loads(sys.argv[2]))))
        raise SystemExit(0)
    raise SystemExit(main())
