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


def test_several_draws_score_every_box_once_per_draw(monkeypatch):
    import pandas as pd
    import torch

    from snapper.training import validation

    seeds = []

    def fake_evaluate(net, model_cfg, ev, method, device):
        seeds.append(ev.seed)
        hit = 100.0 if ev.seed == 0 else 0.0  # draw 0 all right, draw 1 all wrong
        return pd.DataFrame({"iou": [0.95 if hit else 0.5] * 3, "edge_lt_1px": [hit] * 3})

    monkeypatch.setattr(validation, "evaluate_model", fake_evaluate)
    monkeypatch.setattr(validation, "summarize", lambda df, buckets: df)
    monkeypatch.setattr(validation, "summary_metrics", lambda df: {
        "all/edge_lt_1px": df["edge_lt_1px"].mean(), "all/iou_gt_0.9": 100.0 * (df["iou"] > 0.9).mean(),
        "all/miou": 100.0 * df["iou"].mean(), "boxes": len(df)})
    cfg = TrainConfig(device="cpu", data=DataConfig(val_shards=["v-000000.tar"], val_draws=2))
    m = validation.run_validation(torch.nn.Linear(1, 1), cfg, torch.device("cpu"))
    assert seeds == [0, 1] and m["boxes"] == 6 and m["score"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="val_draws"):
        DataConfig(val_draws=0)
