"""MLflow wiring: local SQLite store, runs, params, metrics, artifacts; never ./mlruns."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from snapper.config import TrainConfig


def test_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from snapper.mlops import tracking

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
    assert r.data.params["model.trunk"] == "resnet50" and r.data.params["steps"] == "7"
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


def test_nothing_in_cwd(store) -> None:
    """Runs the tests above made (and MLflow's implicit Default experiment) stay in the project."""
    tracking = store["tracking"]
    with tracking.start_run("unit-last"):
        tracking.log_metrics({"x": 1.0})
    assert not (store["cwd"] / "mlruns").exists()
    assert sorted(os.listdir(store["cwd"])) == []
    default = tracking.mlflow_client().get_experiment("0")
    assert str(store["home"]) in default.artifact_location


def test_links_open_the_model_training_view(monkeypatch):
    from snapper.mlops import tracking
    from snapper.mlops.tracking import experiment_link, model_version_link, run_link

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert run_link("abc") is None and experiment_link("7") is None  # no server known
    assert run_link("abc", base="http://127.0.0.1:5000").startswith("http://127.0.0.1:5000/#/")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000/")
    assert run_link(None) is None

    class Client:
        def get_run(self, run_id):
            return SimpleNamespace(info=SimpleNamespace(experiment_id="7"))

    monkeypatch.setattr(tracking, "mlflow_client", Client)
    assert run_link("abc") == "http://mlflow:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    assert experiment_link("7") == ("http://mlflow:5000/#/experiments/7/runs?workflowType=machine_learning"
                                    "&viewStateShareKey=table1")
    assert model_version_link("snapper", 3) == "http://mlflow:5000/#/models/snapper/versions/3"

    def unreachable():
        raise ConnectionError("no server")

    monkeypatch.setattr(tracking, "mlflow_client", unreachable)
    assert run_link("abc") == "http://mlflow:5000/#/runs/abc?workflowType=machine_learning"  # still a link


def test_experiments_open_on_the_numbers(store) -> None:
    """Model-training kind, a saved runs-list view with the headline metrics as columns, and
    run descriptions; evaluation metrics grouped under a prefix, headline ones bare."""
    import json

    tracking = store["tracking"]
    with tracking.start_run("unit-view", run_name="r") as run:
        tracking.log_evaluation({"snapper/all/miou": 90.0}, [], prefix="val/eval",
                                headline={"miou": 90.0361, "iou_gt_0.9": 36.10294117, "score": 50.0})
    tracking.describe_run(run.info.run_id, "**hello**", {"prefect.flow_run_id": "f1"})
    client = tracking.mlflow_client()
    tags = client.get_experiment_by_name("unit-view").tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    view = json.loads(tags[tracking.SAVED_VIEW_PREFIX + tracking.TABLE1_VIEW])
    columns = json.loads(view["state"])["selectedColumns"]
    assert view["name"] == "Table 1" and "metrics.`table1/2_iou_gt_0.9`" in columns
    assert columns.index("metrics.`table1/1_miou`") < columns.index("metrics.`table1/2_iou_gt_0.9`")
    r = client.get_run(run.info.run_id)
    # headline numbers rounded to 0.01, named to sort in Table 1's order (issue 24)
    assert r.data.metrics == {"val/eval/snapper/all/miou": 90.0, "table1/1_miou": 90.04,
                              "table1/2_iou_gt_0.9": 36.1, "table1/7_score": 50.0}
    assert sorted(tracking.table1_name(m) for m in tracking.HEADLINE_METRICS) == \
        [tracking.table1_name(m) for m in tracking.HEADLINE_METRICS]
    assert r.data.tags[tracking.NOTE_TAG] == "**hello**" and r.data.tags["prefect.flow_run_id"] == "f1"


def test_configure_never_edits_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's locations go to MLflow as arguments: a new database's implicit Default
    experiment still keeps its artifacts in the project, and ``os.environ`` is untouched."""
    from snapper.mlops import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("_MLFLOW_SERVER_ARTIFACT_ROOT", raising=False)
    monkeypatch.setenv("SNAPPER_HOME", str(tmp_path / "fresh"))
    monkeypatch.chdir(tmp_path)
    before = dict(os.environ)
    try:
        uri = tracking.configure()
        default = tracking.mlflow_client().get_experiment("0")
        assert dict(os.environ) == before
        assert uri.endswith("/fresh/mlflow/mlflow.db") and str(tmp_path / "fresh") in default.artifact_location
        assert not (tmp_path / "mlruns").exists()
    finally:
        tracking.mlflow.set_tracking_uri(None)
