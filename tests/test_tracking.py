"""MLflow wiring: local SQLite store, runs, registry, model resolution; never ./mlruns."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from snapper.config import TrainConfig


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """One store per module (importing mlflow and creating the database are the slow parts)."""
    root = tmp_path_factory.mktemp("tracking")
    home, cwd = root / "home", root / "cwd"
    home.mkdir()
    cwd.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("SNAPPER_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.chdir(cwd)
    from snapper import registry, tracking

    previous_uri = tracking.mlflow.get_tracking_uri() if "MLFLOW_TRACKING_URI" in os.environ else None
    uri = tracking.configure()
    yield {"tracking": tracking, "registry": registry, "home": home, "cwd": cwd, "uri": uri}
    if tracking._artifact_env_set_by_us and os.environ.get(tracking._ARTIFACT_ROOT_ENV) == tracking._artifact_env_set_by_us:
        del os.environ[tracking._ARTIFACT_ROOT_ENV]
        tracking._artifact_env_set_by_us = None
    mp.undo()
    if previous_uri:
        tracking.mlflow.set_tracking_uri(previous_uri)


def _checkpoint(path: Path, tag: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.pt").write_bytes(b"weights " + tag.encode())
    (path / "config.json").write_text(json.dumps({"tag": tag}))
    return path


def test_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from snapper import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SNAPPER_HOME", str(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve().as_posix()}/mlflow/mlflow.db"
    assert tracking.artifact_root() == tmp_path.resolve() / "mlflow" / "artifacts"
    monkeypatch.delenv("SNAPPER_HOME")
    monkeypatch.chdir(tmp_path)
    assert tracking.project_root() == tmp_path.resolve()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere/x.db")
    assert tracking.tracking_uri().endswith("/elsewhere/x.db")
    assert tracking.artifact_root() == tmp_path.resolve() / "elsewhere" / "artifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    assert tracking.artifact_root() is None  # a server picks its own
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"]  # set before mlflow was imported


def test_run_logs_params_metrics_artifacts(store, tmp_path: Path) -> None:
    tracking = store["tracking"]
    assert store["uri"].startswith("sqlite:///")
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        tracking.log_metrics({"a": 1.0})
    (tmp_path / "report.md").write_text("# hi")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.txt").write_text("a")
    cfg = TrainConfig(steps=7)
    cfg.data.train_shards = ["s-{000..003}.tar"]
    with tracking.start_run("unit", run_name="r1", tags={"stage": "test"}) as run:
        params = tracking.log_config(cfg)
        tracking.log_config(cfg)  # resuming with the same config is fine
        logged = tracking.log_metrics({"all/iou_gt_0.9": np.float64(8.7), "edge<1px": 3, "skip": None}, step=3)
        tracking.log_artifact(tmp_path / "report.md")
        tracking.log_artifact(tmp_path / "plots", "plots")
        cfg.steps = 8
        with pytest.raises(ValueError, match="steps"):
            tracking.log_config(cfg)
    assert logged == {"all/iou_gt_0.9": 8.7, "edge_1px": 3.0}
    assert (store["home"] / "mlflow" / "mlflow.db").is_file()
    client = tracking.mlflow_client()
    r = client.get_run(run.info.run_id)
    assert r.data.params["model.backbone"] == "resnet50" and r.data.params["steps"] == "7"
    assert r.data.params["data.train_shards"] == '["s-{000..003}.tar"]'
    assert params["jitter.shift"] == "0.1"
    assert r.data.metrics["all/iou_gt_0.9"] == 8.7
    assert client.get_metric_history(run.info.run_id, "edge_1px")[0].step == 3
    assert r.data.tags["stage"] == "test" and r.info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"config.json", "report.md", "plots/a.txt"} <= names
    exp = client.get_experiment_by_name("unit")
    assert exp.artifact_location.startswith((store["home"] / "mlflow" / "artifacts").resolve().as_uri())
    art = Path(store["registry"]._local_dir(r.info.artifact_uri))
    assert (art / "plots" / "a.txt").is_file()


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


def test_nothing_in_cwd(store) -> None:
    """Runs the tests above made (and MLflow's implicit Default experiment) stay in the project."""
    tracking = store["tracking"]
    with tracking.start_run("unit-last"):
        tracking.log_metrics({"x": 1.0})
    assert not (store["cwd"] / "mlruns").exists()
    assert sorted(os.listdir(store["cwd"])) == []
    default = tracking.mlflow_client().get_experiment("0")
    assert str(store["home"]) in default.artifact_location
