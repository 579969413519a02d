"""The model registry: registering checkpoints, resolving every kind of model reference, and
the pyfunc wrapper MLflow serves."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from snapper.mlops.pyfunc import SnapRequestError, encode_image
from snapper.models.reference import DEFAULT_MODEL, resolve_model


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
    v2 = registry.register_checkpoint(run.info.run_id, ck2, "unit-model", tags={"step": 500}, description="two")
    print(f"\nregister_checkpoint: {elapsed:.2f}s")
    assert (v1, v2) == (1, 2)
    assert elapsed < 30  # requirement inference (minutes) must never creep back in

    def tag(p: Path) -> str:
        assert (p / "model.pt").is_file()
        return json.loads((p / "config.json").read_text())["tag"]

    assert tag(resolve_model("models:/unit-model/latest")) == "two"
    assert tag(resolve_model("models:/unit-model/1")) == "one"
    assert tag(resolve_model("unit-model")) == "two"
    assert resolve_model(str(ck1)) == ck1
    assert resolve_model(ck1 / "model.pt") == ck1
    from_run = resolve_model(f"runs:/{run.info.run_id}/model")
    assert tag(from_run) in {"one", "two"}
    mv2 = tracking.mlflow_client().get_model_version("unit-model", "2")
    assert mv2.tags["step"] == "500" and mv2.description == "two"
    with pytest.raises(LookupError, match="no version of 'unit-model' has the alias 'champion'"):
        resolve_model("models:/unit-model@champion")
    tracking.mlflow_client().set_registered_model_alias("unit-model", "champion", "1")
    assert tag(resolve_model(DEFAULT_MODEL.replace("snapper", "unit-model"))) == "one"
    with pytest.raises(LookupError, match="no-such-model"):
        resolve_model("no-such-model")
    with pytest.raises(FileNotFoundError):
        resolve_model("./missing/dir/model.pt")
    with pytest.raises(FileNotFoundError, match="not a snapper checkpoint"):
        registry.register_checkpoint(run.info.run_id, tmp_path, "unit-model")


def test_pyfunc_serves_a_real_checkpoint(store, tmp_path: Path) -> None:
    """The registry entry loads through plain MLflow and snaps boxes."""
    torch = pytest.importorskip("torch")
    checkpoint = pytest.importorskip("snapper.models.checkpoint")
    model_mod = pytest.importorskip("snapper.models.net")
    from PIL import Image

    from snapper.config import ModelConfig

    tracking, registry = store["tracking"], store["registry"]
    torch.manual_seed(0)
    cfg = ModelConfig(trunk="resnet18", input_size=32, fpn_channels=8, decoder_channels=8, decoder_layers=1)
    ck = checkpoint.save_checkpoint(tmp_path / "ck", model_mod.build_model(cfg), cfg)
    img = np.zeros((60, 80, 3), np.uint8)
    img[10:40, 20:50] = 255
    Image.fromarray(img).save(tmp_path / "im.png")
    with tracking.start_run("unit", run_name="pyfunc") as run:
        version = registry.register_checkpoint(None, ck, "unit-pyfunc")
    assert run.info.run_id
    loaded = tracking.mlflow.pyfunc.load_model(f"models:/unit-pyfunc/{version}")
    import pandas as pd

    b64 = encode_image(tmp_path / "im.png")
    rows = pd.DataFrame({"image_b64": [b64] * 2, "x": [18.0, 5.0], "y": [9.0, 5.0],
                         "w": [33.0, 20.0], "h": [30.0, 20.0]})
    out = loaded.predict(rows)
    assert list(out.columns) == ["x", "y", "w", "h", "conf_left", "conf_top", "conf_right", "conf_bottom", "guard"]
    assert len(out) == 2 and np.isfinite(out[["x", "y", "w", "h"]].to_numpy()).all()
    assert (out["w"] >= 1).all() and (out["x"] + out["w"] <= 80 + 1e-6).all()
    wider = loaded.predict(rows, params={"buffer_ratio": 1.5})
    assert wider.shape == out.shape
    with pytest.raises(SnapRequestError, match="row 1: image_b64 is not valid base64"):
        loaded.predict(rows.assign(image_b64=[b64, "%%%"]))


def test_decide_champion() -> None:
    from snapper.mlops.registry import decide_champion

    first = decide_champion("m", 1, 60.0, "val (10 boxes)", None, None, identity_score=40.0)
    assert first.promoted and first.rival == "identity" and "no champion yet" in first.reason
    bad = decide_champion("m", 1, 30.0, "val", None, None, identity_score=40.0)
    assert not bad.promoted  # worse than the rough boxes: never champion
    better = decide_champion("m", 3, 70.0, "val", 2, 65.0, identity_score=40.0)
    assert better.promoted and better.rival == "version 2" and "65.00" in better.reason
    tie = decide_champion("m", 3, 65.0, "val", 2, 65.0, identity_score=40.0)
    assert not tie.promoted  # must strictly beat the champion
    unscored = decide_champion("m", 3, 99.0, "val", 2, None, identity_score=40.0)
    assert not unscored.promoted and "could not be scored" in unscored.reason
    same = decide_champion("m", 2, 65.0, "val", 2, 65.0, identity_score=40.0)
    assert not same.promoted and same.holds and "already" in same.reason and "stays champion" in same.line()
    assert better.holds and not tie.holds
    assert better.line().startswith("m version 3 became champion")


def test_champion_check_moves_the_alias_only_on_a_win(store, tmp_path: Path) -> None:
    tracking, registry = store["tracking"], store["registry"]
    with tracking.start_run("unit", run_name="champ") as run:
        v1 = registry.register_checkpoint(run.info.run_id, _checkpoint(tmp_path / "c1", "one"), "unit-champ")
        v2 = registry.register_checkpoint(run.info.run_id, _checkpoint(tmp_path / "c2", "two"), "unit-champ")
    assert registry.alias_version("unit-champ") is None and registry.alias_version("no-such-model") is None
    registry.record_champion_check(registry.decide_champion("unit-champ", v1, 50.0, "val", None, None, 40.0))
    assert int(registry.alias_version("unit-champ").version) == v1
    lost = registry.decide_champion("unit-champ", v2, 45.0, "val", v1, 50.0, 40.0)
    registry.record_champion_check(lost)
    assert int(registry.alias_version("unit-champ").version) == v1  # untouched
    tags = tracking.mlflow_client().get_model_version("unit-champ", str(v2)).tags
    assert tags["champion.check"] == "kept" and tags["champion.rival"] == "version 1"
    assert tags["champion.rival_score"] == "50" and "45.00 vs 50.00" in tags["champion.reason"]
    registry.describe_version("unit-champ", v2, "not promoted")
    assert tracking.mlflow_client().get_model_version("unit-champ", str(v2)).description == "not promoted"


def test_smoke_presets_never_register_under_the_production_name() -> None:
    from snapper.mlops.registry import CI_MODEL_NAME, model_name_for
    from snapper.models.reference import MODEL_NAME as DEFAULT_MODEL_NAME

    assert model_name_for("cpu-tiny", DEFAULT_MODEL_NAME) == CI_MODEL_NAME
    # issue 24: the synthetic demo has its own name (and champion), never the production one
    assert model_name_for("demo", DEFAULT_MODEL_NAME) == "snapper-demo"
    assert model_name_for("demo", "my-experiments") == "my-experiments"
    assert model_name_for("cpu", DEFAULT_MODEL_NAME) == DEFAULT_MODEL_NAME
    assert model_name_for("cpu-tiny", "my-experiments") == "my-experiments"
