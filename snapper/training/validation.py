"""Model selection during training: Table 1 on the held-out shards, reduced to one score.

score = mean of "edge < 1 px" and "IoU > 0.9" (both in percent): the two numbers the paper
leads with, one per failure mode (a single bad edge, a box that is off overall). Validation
uses the deterministic per-annotation jitter, so two evaluations of the same weights agree;
``data.val_draws`` > 1 scores every box from that many jitter draws (seeds 0..n-1) together.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from snapper.config import EvalConfig, SnapSettings, TrainConfig
from snapper.evaluation.evaluate import evaluate_model
from snapper.evaluation.metrics import summarize, summary_metrics
from snapper.models.checkpoint import unwrap

VAL_BATCH_MIN = 32  # validation needs no gradients: a larger batch than tiny training ones


def validation_config(cfg: TrainConfig) -> EvalConfig:
    snap = SnapSettings(batch_size=max(cfg.batch_size, VAL_BATCH_MIN), device=cfg.device,
                        passes=max(cfg.model.passes))  # a zoom model is chosen on what it will be used for
    return EvalConfig(shards=list(cfg.data.val_shards), jitter=cfg.jitter, snap=snap, max_boxes=cfg.data.val_max_boxes,
                      workers=0, seed=0, verify_shards=cfg.data.verify_shards)


def validation_score(metrics: dict[str, float]) -> float:
    return 0.5 * (metrics["all/edge_lt_1px"] + metrics["all/iou_gt_0.9"])


def run_validation(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Table 1 on the held-out shards, flat names (``all/miou``...) plus ``score``."""
    net = unwrap(model)
    was_training = net.training
    ev = validation_config(cfg)
    try:
        df = pd.concat([evaluate_model(net, cfg.model, dataclasses.replace(ev, seed=k), method="val", device=device)
                        for k in range(cfg.data.val_draws)], ignore_index=True)
    finally:
        net.train(was_training)
    if len(df) == 0:
        raise RuntimeError(f"validation produced no boxes from data.val_shards={cfg.data.val_shards!r}")
    metrics = summary_metrics(summarize(df, buckets=False))
    metrics["score"] = validation_score(metrics)
    return metrics
