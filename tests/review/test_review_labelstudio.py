"""``snapper review push/pull`` against a real Label Studio (the one ``make labelstudio`` and
``experiments/labelstudio_e2e.py`` install into ``$LS_VENV``); skipped where it is not installed.
A reviewer's work is made through Label Studio's own REST API (the browser version of it is
``experiments/labelstudio_browser.py --review``)."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
from pathlib import Path

import pytest
import requests

from snapper.cli.review import main as review_main
from snapper.review.tasks import GOLD_JSON, REVIEW_DIR, ROUGH_JSON

ROOT = Path(__file__).resolve().parents[2]
LS_VENV = Path(os.environ.get("LS_VENV", "/tmp/labelstudio_venv"))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (LS_VENV / "bin" / "label-studio").exists(),
                                 reason=f"Label Studio is not installed in {LS_VENV} (make labelstudio installs it)")]


def _e2e_module():
    spec = importlib.util.spec_from_file_location("labelstudio_e2e", ROOT / "experiments" / "labelstudio_e2e.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_push_review_pull_against_label_studio(batch_out, tmp_path, monkeypatch, capsys) -> None:
    out, images = batch_out
    token = secrets.token_hex(20)
    with _e2e_module().label_studio(tmp_path, token, files_root=images.parent) as url:
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
        monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(images.parent))
        args = [str(out), "--project", "e2e review", "--label-studio", url]
        assert review_main(["push", *args, "--images", str(images)]) == 0
        assert review_main(["push", *args, "--images", str(images)]) == 0  # idempotent
        assert "0 tasks imported, 2 already there" in capsys.readouterr().out
        s = requests.Session()
        s.headers["Authorization"] = f"Token {token}"
        [project] = s.get(f"{url}/api/projects").json()["results"]
        tasks = s.get(f"{url}/api/projects/{project['id']}/export",
                      params={"exportType": "JSON", "download_all_tasks": "true"}).json()
        assert len(tasks) == 2
        t1 = next(t for t in tasks if t["data"]["snapper_boxes"] == [1, 2, 3])
        assert s.get(f"{url}{t1['data']['image']}").status_code == 200  # Label Studio serves the image
        [pred] = s.get(f"{url}/api/predictions", params={"task": t1["id"]}).json()
        regions = pred["result"]
        assert [r["id"] for r in regions] == ["snapper-1", "snapper-2", "snapper-3"]
        regions[0]["value"]["x"] += 2.5  # the left edge of box 1 moved 5 px; box 3 deleted
        ann = s.post(f"{url}/api/tasks/{t1['id']}/annotations", json={"result": regions[:2]})
        ann.raise_for_status()
        assert review_main(["pull", *args]) == 0
        gold = json.loads((out / REVIEW_DIR / GOLD_JSON).read_text())
        assert {a["id"]: a["bbox"][0] for a in gold["annotations"]} == {1: 15.0, 2: 100.0}
        assert sorted(a["id"] for a in json.loads((out / REVIEW_DIR / ROUGH_JSON).read_text())["annotations"]) == [1, 2]
        assert "confirmed 1, corrected 1, removed 1" in capsys.readouterr().out
        s.delete(f"{url}/api/annotations/{ann.json()['id']}").raise_for_status()
        assert review_main(["pull", *args]) == 0
        assert "gone from Label Studio" in capsys.readouterr().err
        assert review_main(["pull", str(out), "--project", "nope", "--label-studio", url]) == 2
        assert "no project named 'nope'" in capsys.readouterr().err
        up = [str(out), "--project", "e2e upload", "--label-studio", url, "--images", str(images), "--upload"]
        assert review_main(["push", *up]) == 0 and review_main(["push", *up]) == 0  # images sent once
        [uploaded] = [p for p in s.get(f"{url}/api/projects").json()["results"] if p["title"] == "e2e upload"]
        tasks = s.get(f"{url}/api/projects/{uploaded['id']}/export",
                      params={"exportType": "JSON", "download_all_tasks": "true"}).json()
        assert len(tasks) == 2 and all(t["data"]["image"].startswith(f"/data/upload/{uploaded['id']}/") for t in tasks)
        for t in tasks:  # served by Label Studio itself, byte for byte
            assert s.get(f"{url}{t['data']['image']}").content == (images / t["data"]["snapper_file"]).read_bytes()
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "wrong")
        assert review_main(["pull", *args]) == 2
        assert "refused the API key" in capsys.readouterr().err
