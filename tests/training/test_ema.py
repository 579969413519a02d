"""The weight average (snapper.training.ema) and how training keeps it (TrainConfig.ema_decay)."""

from __future__ import annotations

import pytest
import torch

from snapper.models.checkpoint import load_checkpoint
from snapper.training.ema import build_ema, ema_decay_at
from snapper.training.loop import train
from snapper.training.state import STATE_FILE
from tests.helpers import make_tiny_shards, tiny_train_config



def test_average_follows_the_warmed_up_decay():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = build_ema(net, decay=0.9)
    assert ema.module is not net[0] and not ema.module.training
    expected = None
    for n in range(6):
        with torch.no_grad():
            net[0].weight.copy_(torch.full((2, 3), float(n)))
        net[1].num_batches_tracked.fill_(n)
        ema.update_parameters(net)
        w = float(n) if expected is None else expected
        if expected is not None:  # the first update copies; later ones lerp with the warmed-up decay
            d = ema_decay_at(0.9, n)
            w = d * expected + (1 - d) * n
        expected = w
        assert torch.allclose(ema.module[0].weight, torch.full((2, 3), expected))
        assert int(ema.module[1].num_batches_tracked) == n  # integer buffers: the latest value
    # early on the decay is below the configured one, later it is the configured one
    assert ema_decay_at(0.9, 1) == pytest.approx(2 / 11) and ema_decay_at(0.9, 10_000) == 0.9


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_decay_out_of_range_is_refused(decay, tmp_path):
    with pytest.raises(ValueError, match="ema_decay"):
        build_ema(torch.nn.Linear(2, 2), decay)
    with pytest.raises(ValueError, match="ema_decay"):  # refused when the config is built
        train(tiny_train_config({"train": ["x.tar"], "val": []}, tmp_path / "r", ema_decay=decay))
    assert not (tmp_path / "r").exists()


def test_training_keeps_the_average_in_checkpoints_and_across_a_resume(tmp_path):
    shards = make_tiny_shards(tmp_path / "data")
    cfg = tiny_train_config(shards, tmp_path / "run", steps=6, ckpt_every=3, eval_every=3, ema_decay=0.9)
    half = train(cfg, max_steps_this_run=3)
    assert half.steps == 3
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    assert int(state["ema"]["n_averaged"]) == 3
    res = train(cfg)  # resumes: the average continues instead of starting over
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    assert res.steps == 6 and int(state["ema"]["n_averaged"]) == 6

    last, _, meta = load_checkpoint(res.last_checkpoint)
    assert meta["step"] == 6
    saved = last.state_dict()
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    raw = state["model"]
    assert saved.keys() == averaged.keys() == raw.keys()
    assert all(torch.equal(saved[k], averaged[k]) for k in saved)  # last/ holds the average ...
    assert any(not torch.equal(saved[k], raw[k]) for k in saved if saved[k].is_floating_point())  # ... not the raw weights
    assert load_checkpoint(res.best_checkpoint)[2]["metrics"]["score"] == pytest.approx(res.best_score)
