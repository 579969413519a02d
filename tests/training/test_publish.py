"""After training: the evaluation that decides a registration, and ``snapper train``'s one call
to the registration path the flow also uses."""

from __future__ import annotations

import json
import logging

import pytest

from snapper import cli
from snapper.config import TrackingConfig, TrainConfig
from snapper.training.publish import evaluate_and_register, headline, table_rows


def test_headline_and_rows() -> None:
    metrics = {"snapper/all/edge_lt_1px": 40.0, "snapper/all/iou_gt_0.9": 60.0, "snapper/all/miou": 80.0,
               "identity/all/miou": 70.0}
    h = headline(metrics, "snapper")
    assert h == {"edge_lt_1px": 40.0, "iou_gt_0.9": 60.0, "miou": 80.0, "score": 50.0}
    assert headline(metrics, "identity") == {"miou": 70.0}  # no score without its two numbers
    rows = table_rows([{"method": "snapper", "size": "all", "n_boxes": 3, "miou": 80.04, "worse_gt_0.1": 33.33}])
    assert rows[0]["method"] == "snapper" and rows[0]["boxes"] == 3 and rows[0]["mIoU"] == 80.0
    assert rows[0]["worse >0.1 IoU"] == 33.3  # the boxes a model broke, in every table it reports


def test_nothing_to_register_says_why(caplog: pytest.LogCaptureFixture) -> None:
    cfg = TrainConfig(out_dir="runs/x")
    caplog.set_level(logging.WARNING, "snapper.training.publish")
    assert evaluate_and_register(cfg, "runs/x/best", None, 5) is None
    assert "tracking.enabled=false" in caplog.text
    no_val = TrainConfig(out_dir="runs/x")
    assert evaluate_and_register(no_val, "runs/x/best", "run-id", 5) is None
    assert "no validation shards" in caplog.text
    caplog.clear()
    never = TrainConfig(out_dir="runs/x", tracking=TrackingConfig(registered_model=None))
    assert evaluate_and_register(never, "runs/x/best", "run-id", 5) is None and not caplog.text


def test_cli_train_registers_after_evaluating(tmp_path, monkeypatch, capsys) -> None:
    from tests.helpers import make_tiny_shards

    shards = make_tiny_shards(tmp_path / "data")
    monkeypatch.setenv("SNAPPER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    rc = cli.main(["train", "--preset", "cpu-tiny", "--set", "model.input_size=32", "--set", "steps=2",
                   "--set", "eval_every=2", "--set", "log_every=1", "--set", "device=cpu",
                   "--set", f"data.train_shards={json.dumps(shards['train'])}",
                   "--set", f"data.val_shards={json.dumps(shards['val'])}",
                   "--set", "tracking.registered_model=unit-cli", "--out-dir", str(out)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    reg = result["registered"]
    assert reg["name"] == "unit-cli"  # (cpu-tiny would register the production name under snapper-ci)
    assert reg["version"] >= 1 and (out / "eval").is_dir()

    from snapper.mlops import tracking

    mv = tracking.mlflow_client().get_model_version(reg["name"], str(reg["version"]))
    assert mv.run_id == result["mlflow_run_id"] and mv.tags["champion.rival"] == "identity"
    # lineage (issue 24): the data it was trained on, on the version and beside the checkpoint
    import hashlib
    from pathlib import Path

    manifest = Path(shards["dir"]) / "train-manifest.json"
    assert mv.tags["data.train_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert mv.tags["data.kind"] == "real" and mv.tags["data.name"] == Path(shards["dir"]).name
    assert not any(k.startswith("snapper.all.") for k in mv.tags)  # the rest is a JSON artifact
    client = tracking.mlflow_client()
    assert f"registration/version-{reg['version']}.json" in {
        a.path for a in client.list_artifacts(mv.run_id, "registration")}
    assert json.loads((out / "best" / "lineage.json").read_text())["val"]["shards"] == shards["val"]
    inputs = {(d.dataset.name, d.dataset.digest, {t.key: t.value for t in d.tags}["mlflow.data.context"])
              for d in client.get_run(mv.run_id).inputs.dataset_inputs}  # the run page's "Datasets"
    name = Path(shards["dir"]).name
    assert (f"{name}/train", hashlib.sha256(manifest.read_bytes()).hexdigest()[:36], "training") in inputs
    assert any(n == f"{name}/val" and c == "validation" for n, _, c in inputs)
    assert "#/experiments/" in mv.description  # a working link to the run inside MLflow's UI
    # a smoke preset is tracked in its own experiment
    assert client.get_experiment(client.get_run(mv.run_id).info.experiment_id).name == "snapper-ci"
