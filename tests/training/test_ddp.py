"""DDP on CPU (gloo, 2 processes): lockstep, rank-0-only outputs, identical weights."""

from __future__ import annotations

import json

import pytest
import torch.multiprocessing as mp

from snapper.models.checkpoint import load_checkpoint
from snapper.overrides import to_dict
from snapper.training.distributed import weights_digest
from snapper.training.state import load_state
from tests.helpers import ddp_worker, free_port, make_tiny_shards, tiny_train_config


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    shards = make_tiny_shards(tmp_path / "data")
    # Validation every 2 steps on rank 0 while rank 1 waits at the barrier; checkpoints every 2.
    cfg = tiny_train_config(shards, tmp_path / "run", steps=4, ckpt_every=2, eval_every=2, log_every=1)
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(ddp_worker, args=(2, free_port(), to_dict(cfg), str(results)), nprocs=2, join=True)

    r0, r1 = (json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 4  # lockstep: both ranks ran every step
    assert r0["weights_digest"] == r1["weights_digest"]  # DDP kept the replicas identical
    out0, out1 = tmp_path / "run" / "rank0", tmp_path / "run" / "rank1"
    assert not out1.exists()  # only rank 0 writes checkpoints, state, logs
    state = load_state(out0)
    assert state.finished and state.step == 4 and len(state.rng) == 2  # every rank's RNG kept
    model, _, _ = load_checkpoint(r0["last_checkpoint"])
    assert weights_digest(model) == r0["weights_digest"]
    assert (out0 / "best" / "model.pt").is_file()
    # The logged loss is the mean over ranks, one row per step.
    rows = [json.loads(x) for x in (out0 / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
