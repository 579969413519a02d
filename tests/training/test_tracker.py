"""MLflow for a training run: off means no calls at all."""

from __future__ import annotations

from snapper.config import TrainConfig
from snapper.training.tracker import RunTracker, grouped_name


def test_disabled_tracker_does_nothing(tmp_path):
    t = RunTracker(TrainConfig(out_dir=str(tmp_path / "r")), enabled=False, run_id="keep")
    t.log_config(TrainConfig())
    t.log_metrics({"a": 1.0}, 1)
    t.log_artifact(tmp_path / "missing")  # not even looked at
    assert not hasattr(t, "register") and t.run_id == "keep"  # training never registers (snapper.mlops.lifecycle)
    t.close(failed=True)
    assert not (tmp_path / "mlflow").exists()


def test_one_point_summaries_are_grouped_under_val():
    assert grouped_name("best/all/miou") == "val/best/all/miou" and grouped_name("last/score") == "val/last/score"
    assert grouped_name("train/loss") == "train/loss" and grouped_name("val/score") == "val/score"
