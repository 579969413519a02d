"""Label Studio in a real browser: a user draws a loose box, the snapped one comes back.

    .venv/bin/python experiments/labelstudio_browser.py --model runs/coco-real/lite0/best

What a labeller does, driven through headless Chromium (Playwright): log in, open a task of an
uploaded photo, switch on Auto-Annotation, pick the smart rectangle tool, draw a loose box
around an object, see snapper's suggestion, draw again a few times (rejecting each suggestion),
then accept one and submit. Checks that the submitted annotation is the suggested box, and
reports the latency the browser saw (mouse released -> suggestion received, through Label
Studio's proxy), and the IoU of the drawn and the snapped box with the photo's COCO box.

Needs what ``labelstudio_e2e.py`` installs (Label Studio in its own venv, ``$LS_VENV``), plus
Playwright in that venv and a Chromium (``apt-get install chromium``; Playwright's own browser
download is not needed). ``--model`` should be a model trained on photos (e.g. a checkpoint of
``experiments/coco_real.py``); the default photo is from the report split of that experiment.
Writes ``experiments/results/labelstudio-browser/`` (result.json and two screenshots; failure.jpg
when the browser part fails).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT.parent / "shared" / "data" / "coco-mini"
PHOTO = DATA / "images" / "000000252639.jpg"  # a bus; report split of experiments/coco_real.py
ROUGH = (128.0, 122.0, 392.0, 292.0)  # x0, y0, x1, y1 in image pixels: loose around the bus
USER, PASSWORD = "labeller@example.com", "snapper-browser"


def iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def truth_box(photo: Path, rough: list[float]) -> list[float] | None:
    """The COCO box of ``photo`` (from its folder's annotations.json) best matching ``rough``."""
    ann = photo.parent.parent / "annotations.json"
    if not ann.is_file():
        return None
    coco = json.loads(ann.read_text())
    ids = {i["id"] for i in coco["images"] if i["file_name"] == photo.name}
    boxes = [[x, y, x + w, y + h] for a in coco["annotations"] if a["image_id"] in ids
             for x, y, w, h in [a["bbox"]]]
    return max(boxes, key=lambda b: iou(b, rough), default=None)


def value_to_xyxy(v: dict, width: int, height: int) -> list[float]:
    x, y = v["x"] / 100 * width, v["y"] / 100 * height
    return [x, y, x + v["width"] / 100 * width, y + v["height"] / 100 * height]


# ------------------------------------------------------------------ the browser (LS venv)


def drive(args: dict) -> dict:
    """Runs in Label Studio's venv (Playwright lives there, not in the project's)."""
    from playwright.sync_api import sync_playwright

    base, out = args["base"], Path(args["out"])
    latencies: list[float] = []
    answers: list[dict] = []
    drawn: list[dict] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args["chromium"], args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            _label(page, args, base, out, latencies, answers, drawn)
        except Exception:
            page.screenshot(path=str(out / "failure.jpg"), quality=80)
            raise
        finally:
            browser.close()
    return {"latencies_ms": latencies, "answers": answers, "drawn": drawn}


def open_task(page, base: str, user: str, password: str, project: int, task: int) -> None:
    """Log in to Label Studio and open a task in the labelling view."""
    page.goto(f"{base}/user/login/")
    page.fill("input[name=email]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    page.goto(f"{base}/projects/{project}/data?task={task}")
    page.wait_for_load_state("networkidle")


def _label(page, args: dict, base: str, out: Path, latencies: list[float], answers: list[dict],
           drawn: list[dict]) -> None:
    width, height = args["width"], args["height"]
    x0, y0, x1, y1 = args["rough"]
    open_task(page, base, USER, PASSWORD, args["project"], args["task"])
    page.get_by_text("Auto-Annotation").click()
    page.locator("button.lsf-tool_smart:not([aria-label])").click()  # the smart tools' group
    page.locator('button.lsf-tool_smart[aria-label="rectangle-tool"]').click()
    label = page.locator(".lsf-label", has_text="Box").first
    page.wait_for_timeout(1000)
    photos = page.locator("img")  # the largest: the labeling view's photo, not the list's thumbnail
    bb = max((photos.nth(i).bounding_box() for i in range(photos.count())),
             key=lambda b: b["width"] * b["height"] if b else 0)
    sx, sy = bb["width"] / width, bb["height"] / height
    a = (bb["x"] + x0 * sx, bb["y"] + y0 * sy)
    b = (bb["x"] + x1 * sx, bb["y"] + y1 * sy)
    for attempt in range(args["draws"]):
        if "lsf-label_selected" not in (label.get_attribute("class") or ""):  # rejecting unselects it
            label.click()
        page.mouse.move(*a)
        page.mouse.down()
        for k in range(1, 11):
            page.mouse.move(a[0] + (b[0] - a[0]) * k / 10, a[1] + (b[1] - a[1]) * k / 10)
        with page.expect_response(lambda r: "interactive-annotating" in r.url, timeout=60_000) as info:
            t = page.evaluate("performance.now()")
            page.mouse.up()
        response = info.value
        body = response.json()
        latencies.append(page.evaluate("performance.now()") - t)
        answers.append(body["data"]["result"][0])
        drawn.append(response.request.post_data_json["context"]["result"][-1]["value"])  # as Label Studio sent it
        page.get_by_test_id("bottombar-accept-suggestions-button").wait_for(state="visible")
        if attempt < args["draws"] - 1:
            page.get_by_test_id("bottombar-reject-suggestions-button").click()
            page.wait_for_timeout(300)
    page.wait_for_timeout(500)
    page.screenshot(path=str(out / "suggested.jpg"), quality=80)
    page.get_by_test_id("bottombar-accept-suggestions-button").click()
    page.wait_for_timeout(300)
    page.get_by_label("Submit current annotation").click()
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "submitted.jpg"), quality=80)


# ------------------------------------------------------------------ the scenario (.venv)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model reference or checkpoint folder (default: the champion)")
    p.add_argument("--photo", type=Path, default=PHOTO)
    p.add_argument("--rough", type=float, nargs=4, default=ROUGH, metavar=("X0", "Y0", "X1", "Y1"))
    p.add_argument("--passes", type=int, choices=(1, 2), default=1, help="2: the zoom-in pass (model.zoom models)")
    p.add_argument("--draws", type=int, default=5, help="boxes drawn (the last one is accepted)")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "labelstudio-browser",
                   help="result.json and the screenshots go here")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # here, not at the top: --drive runs without torch
    from labelstudio_e2e import BACKEND_PORT, LABEL_CONFIG, LS_PORT, LS_VENV, services
    from PIL import Image

    ls_python = LS_VENV / "bin" / "python"
    if not args.photo.is_file():
        raise SystemExit(f"{args.photo}: no such photo (pass --photo)")
    if not Path(args.chromium).is_file():
        raise SystemExit(f"{args.chromium}: no Chromium (apt-get install chromium, or pass --chromium)")
    with Image.open(args.photo) as im:
        width, height = im.size
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failure.jpg").unlink(missing_ok=True)
    token = secrets.token_hex(20)
    with tempfile.TemporaryDirectory(prefix="ls-browser-") as tmp:
        tmp_p = Path(tmp)
        (tmp_p / "files").mkdir()
        model = args.model or os.environ.get("SNAPPER_MODEL") or "models:/snapper@champion"
        with services(tmp_p, model, token, USER, PASSWORD, args.passes) as (api, headers):
            if subprocess.run([str(ls_python), "-c", "import playwright"], capture_output=True).returncode:
                subprocess.run([str(ls_python), "-m", "pip", "install", "-q", "playwright"], check=True)
            s = requests.Session()
            s.headers.update(headers)
            pid = s.post(f"{api}/projects", json={"title": "snapper in the browser", "label_config": LABEL_CONFIG},
                         timeout=60).json()["id"]
            ml = s.post(f"{api}/ml", json={"url": f"http://127.0.0.1:{BACKEND_PORT}", "project": pid,
                                           "title": "snapper", "is_interactive": True}, timeout=60)
            assert ml.status_code in (200, 201), ml.text
            with args.photo.open("rb") as f:  # uploaded as a user would: Import -> upload files
                s.post(f"{api}/projects/{pid}/import", files={"file": f}, timeout=60).raise_for_status()
            tid = s.get(f"{api}/tasks", params={"project": pid}, timeout=60).json()["tasks"][0]["id"]
            job = {"base": f"http://127.0.0.1:{LS_PORT}", "project": pid, "task": tid, "width": width,
                   "height": height, "rough": list(args.rough), "draws": args.draws, "chromium": args.chromium,
                   "out": str(args.out)}
            driven = subprocess.run([str(ls_python), __file__, "--drive", json.dumps(job)], capture_output=True,
                                    text=True, timeout=600)
            if driven.returncode:
                raise RuntimeError(f"the browser part failed:\n{driven.stderr[-4000:]}")
            seen = json.loads(driven.stdout.strip().splitlines()[-1])
            [annotation] = s.get(f"{api}/tasks/{tid}/annotations", timeout=60).json()
    suggested = seen["answers"][-1]
    [saved] = [r for r in annotation["result"] if r["type"] == "rectanglelabels"]
    for k in ("x", "y", "width", "height"):
        assert abs(saved["value"][k] - suggested["value"][k]) < 1e-6, (saved, suggested)
    snapped = value_to_xyxy(suggested["value"], width, height)
    rough = value_to_xyxy(seen["drawn"][-1], width, height)  # the mouse's box, in image pixels
    truth = truth_box(args.photo, rough)
    result = {
        "photo": args.photo.name, "model": model, "passes": args.passes, "draws": args.draws,
        "browser_latency_ms": {"p50": round(statistics.median(seen["latencies_ms"]), 1),
                               "max": round(max(seen["latencies_ms"]), 1),
                               "all": [round(v, 1) for v in seen["latencies_ms"]]},
        "rough_xyxy": [round(v, 1) for v in rough], "snapped_xyxy": [round(v, 1) for v in snapped],
        "edge_confidence": suggested["meta"]["confidence"], "score": suggested["score"],
        "submitted_equals_suggestion": True, "label": saved["value"]["rectanglelabels"],
    }
    if truth:
        result |= {"truth_xyxy": [round(v, 1) for v in truth], "iou_rough": round(iou(rough, truth), 3),
                   "iou_snapped": round(iou(snapped, truth), 3),
                   "edge_error_px": {k: round(abs(a - b), 1) for k, a, b in
                                     zip(("left", "top", "right", "bottom"), snapped, truth)}}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--drive":  # in Label Studio's venv: Playwright, no torch
        print(json.dumps(drive(json.loads(sys.argv[2]))))
        raise SystemExit(0)
    raise SystemExit(main())
