"""Model selection: the validation config and score."""

from __future__ import annotations

import pytest

from snapper.config import DataConfig, JitterConfig, TrainConfig
from snapper.training.validation import validation_config, validation_score


def test_validation_config_follows_the_run():
    cfg = TrainConfig(batch_size=8, device="cpu", jitter=JitterConfig(shift=0.3),
                      data=DataConfig(val_shards=["v-000000.tar"], val_max_boxes=64, seed=5))
    ev = validation_config(cfg)
    assert ev.shards == ["v-000000.tar"] and ev.max_boxes == 64 and ev.jitter.shift == 0.3
    assert ev.snap.batch_size == 32 and ev.workers == 0 and ev.snap.device == "cpu"
    assert ev.seed == 0  # the same boxes at every evaluation, whatever the data seed


def test_score_is_the_mean_of_the_two_headline_numbers():
    assert validation_score({"all/edge_lt_1px": 40.0, "all/iou_gt_0.9": 60.0, "all/miou": 1.0}) == pytest.approx(50.0)
