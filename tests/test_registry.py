"""The model registry: registering checkpoints, resolving every kind of model reference, and
the pyfunc wrapper MLflow serves."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest


def _checkpoint(path: Path, tag: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.pt").write_bytes(b"weights " + tag.encode())
    (path / "config.json").write_text(json.dumps({"tag": tag}))
    return path


def test_register_and_resolve(store, tmp_path: Path) -> None:
    tracking, registry = store["tracking"], store["registry"]
    ck1 = _checkpoint(tmp_path / "ck_a", "one")
    ck2 = _checkpoint(tmp_path / "ck_b", "two")
    with tracking.start_run("unit", run_name="train") as run:
        t = time.perf_counter()
        v1 = registry.register_checkpoint(run.info.run_id, ck1, "unit-model")
        elapsed = time.perf_counter() - t
    v2 = registry.register_checkpoint(run.info.run_id, ck2, "unit-model", tags={"step": 500})
    print(f"\nregister_checkpoint: {elapsed:.2f}s")
    assert (v1, v2) == (1, 2)
    assert elapsed < 30  # requirement inference (minutes) must never creep back in

    def tag(p: Path) -> str:
        assert (p / "model.pt").is_file()
        return json.loads((p / "config.json").read_text())["tag"]

    assert tag(registry.resolve_model("models:/unit-model/latest")) == "two"
    assert tag(registry.resolve_model("models:/unit-model/1")) == "one"
    assert tag(registry.resolve_model("unit-model")) == "two"
    assert registry.resolve_model(str(ck1)) == ck1
    assert registry.resolve_model(ck1 / "model.pt") == ck1
    from_run = registry.resolve_model(f"runs:/{run.info.run_id}/model")
    assert tag(from_run) in {"one", "two"}
    assert tracking.mlflow_client().get_model_version("unit-model", "2").tags["step"] == "500"
    with pytest.raises(LookupError, match="no-such-model"):
        registry.resolve_model("no-such-model")
    with pytest.raises(FileNotFoundError):
        registry.resolve_model("./missing/dir/model.pt")
    with pytest.raises(FileNotFoundError, match="not a snapper checkpoint"):
        registry.register_checkpoint(run.info.run_id, tmp_path, "unit-model")


def test_pyfunc_serves_a_real_checkpoint(store, tmp_path: Path) -> None:
    """The registry entry loads through plain MLflow and snaps boxes."""
    torch = pytest.importorskip("torch")
    checkpoint = pytest.importorskip("snapper.checkpoint")
    model_mod = pytest.importorskip("snapper.model")
    from PIL import Image

    from snapper.config import ModelConfig

    tracking, registry = store["tracking"], store["registry"]
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", input_size=32, fpn_channels=8, decoder_channels=8, decoder_layers=1)
    ck = checkpoint.save_checkpoint(tmp_path / "ck", model_mod.build_model(cfg), cfg)
    img = np.zeros((60, 80, 3), np.uint8)
    img[10:40, 20:50] = 255
    Image.fromarray(img).save(tmp_path / "im.png")
    with tracking.start_run("unit", run_name="pyfunc") as run:
        version = registry.register_checkpoint(None, ck, "unit-pyfunc")
    assert run.info.run_id
    loaded = tracking.mlflow.pyfunc.load_model(f"models:/unit-pyfunc/{version}")
    import pandas as pd

    rows = pd.DataFrame({"image": [str(tmp_path / "im.png")] * 2, "x": [18.0, 5.0], "y": [9.0, 5.0],
                         "w": [33.0, 20.0], "h": [30.0, 20.0]})
    out = loaded.predict(rows)
    assert list(out.columns) == ["x", "y", "w", "h", "conf_left", "conf_top", "conf_right", "conf_bottom"]
    assert len(out) == 2 and np.isfinite(out[["x", "y", "w", "h"]].to_numpy()).all()
    assert (out["w"] >= 1).all() and (out["x"] + out["w"] <= 80 + 1e-6).all()
    wider = loaded.predict(rows, params={"buffer_ratio": 1.5})
    assert wider.shape == out.shape
