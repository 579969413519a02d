"""Edge positions as distributions over bins: soft targets, loss, decoding and confidence.

Bins sit on input-pixel *boundaries*: with ``num_bins = S + 1`` bin k is the position u = k
(input pixels), so an edge anywhere in ``[0, S]`` - including exactly on the crop border - has
a representable target. A sub-bin ground truth u is split between its two neighbouring bins
(weights 1 - frac, frac: the "two-bin" soft target of distribution focal loss). Its
expectation is exactly u, so a local expectation around the peak decodes it back without bias;
that is what makes sub-pixel output possible from a classifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from snapper.geometry import SIZE_BUCKETS, size_bucket

# ModelConfig.calibration: knots [[x...], [y...]], one set of knots per size bucket, or None
Calibration = Sequence[Sequence[float]] | Mapping[str, Sequence[Sequence[float]]] | None
ALL_BOXES = "all"  # the key of a per-size calibration's map for every box (ModelConfig.CALIBRATION_KEYS)


def positions_to_bins(pos: torch.Tensor, size: int, num_bins: int) -> torch.Tensor:
    return pos * ((num_bins - 1) / size)


def bins_to_positions(idx: torch.Tensor, size: int, num_bins: int) -> torch.Tensor:
    return idx * (size / (num_bins - 1))


def soft_targets(pos: torch.Tensor, size: int, num_bins: int) -> torch.Tensor:
    """(..., ) input-pixel positions -> (..., num_bins) two-bin soft targets."""
    t = positions_to_bins(pos.float(), size, num_bins).clamp(0, num_bins - 1)
    lo = t.floor().clamp(max=num_bins - 2)
    frac = t - lo
    out = torch.zeros(*t.shape, num_bins, device=pos.device, dtype=torch.float32)
    out.scatter_(-1, lo.long().unsqueeze(-1), (1 - frac).unsqueeze(-1))
    out.scatter_add_(-1, (lo.long() + 1).unsqueeze(-1), frac.unsqueeze(-1))
    return out


def edge_loss(logits: torch.Tensor, target_pos: torch.Tensor, size: int) -> torch.Tensor:
    """Cross-entropy of (B, 4, num_bins) logits against two-bin soft targets of (B, 4) positions."""
    num_bins = logits.shape[-1]
    q = soft_targets(target_pos, size, num_bins)
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(q * logp).sum(-1).mean()


def decode_edges(
    logits: torch.Tensor, size: int, window: int = 2, tolerance: "torch.Tensor | float" = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 4, num_bins) logits -> positions (B, 4) in input pixels and confidence (B, 4) in [0, 1].

    Position: expectation of the distribution renormalised within ``window`` bins of the peak
    (a global expectation would be dragged by a second mode, e.g. a neighbouring object's edge).
    Confidence: the probability mass within ``tolerance`` input px (a number or (B, 4)) of
    that position - the model's own probability that the edge is that close (see
    :func:`mass_within`; callers that know the crop's scale pass a tolerance in original px
    divided by it).
    """
    num_bins = logits.shape[-1]
    p = F.softmax(logits.float(), dim=-1)
    peak = p.argmax(-1, keepdim=True)
    idx = torch.arange(num_bins, device=logits.device).view(*([1] * (logits.ndim - 1)), num_bins)
    pw = p * ((idx - peak).abs() <= window)
    pos = bins_to_positions((pw * idx).sum(-1) / pw.sum(-1).clamp_min(1e-12), size, num_bins)
    tol = torch.as_tensor(tolerance, dtype=p.dtype, device=p.device).expand_as(pos)
    return pos, mass_within(p, pos, size, tol)


def mass_within(p: torch.Tensor, pos: torch.Tensor, size: int, radius: torch.Tensor) -> torch.Tensor:
    """Probability that each edge lies within ``radius`` input px of ``pos``, under the
    distribution ``p`` (..., num_bins): every bin's mass is spread over its own bin width and
    counted by its overlap with [pos - radius, pos + radius]. With ``radius`` = a tolerance in
    original pixels divided by the crop's scale, this is the model's own probability that the
    edge passes that tolerance in the original image."""
    num_bins = p.shape[-1]
    step = size / (num_bins - 1)
    centre = torch.arange(num_bins, device=p.device, dtype=p.dtype) * step
    lo = (pos - radius).unsqueeze(-1).to(p.dtype)
    hi = (pos + radius).unsqueeze(-1).to(p.dtype)
    overlap = (torch.minimum(centre + step / 2, hi) - torch.maximum(centre - step / 2, lo)).clamp(0, step) / step
    return (p * overlap).sum(-1).clamp(0, 1)


def calibration_buckets(area: np.ndarray) -> np.ndarray:
    """Which map of a per-size calibration each rough-box ``area`` (original px^2) reads: its COCO
    size bucket (:func:`snapper.geometry.size_bucket`), or ``"all"`` where the area is not finite."""
    a = np.asarray(area, dtype=np.float64)
    return np.where(np.isfinite(a), size_bucket(a), ALL_BOXES)


def calibrate_confidence(conf: np.ndarray, calibration: Calibration, area: "np.ndarray | None" = None) -> np.ndarray:
    """Raw confidences (any shape) through a calibration's knots ``[[x...], [y...]]``
    (``ModelConfig.calibration``, fitted by :mod:`snapper.evaluation.calibration`), linearly
    between knots and flat beyond the ends; NaN (no confidence) stays NaN. The one definition of
    how a stored calibration reads, for the fit's own check and for every read-out.

    A per-size calibration ``{"all": knots, "small": knots, ...}`` maps each box's edges with its
    rough box's COCO size bucket (:func:`snapper.geometry.size_bucket` of ``area``, the rough
    box's area in original pixels: one per leading row of ``conf``, e.g. (B,) for (B, 4)); a
    bucket without knots of its own, a non-finite area, or no ``area`` at all reads ``"all"``.
    One np.interp per bucket, never a loop over boxes. Plain knots ignore ``area``."""
    conf = np.asarray(conf, dtype=np.float64)
    if calibration is None:
        return conf
    if not isinstance(calibration, Mapping):
        xs, ys = (np.asarray(k, dtype=np.float64) for k in calibration)
        return np.interp(conf, xs, ys)
    out = calibrate_confidence(conf, calibration[ALL_BOXES])
    if area is None:
        return out
    bucket = calibration_buckets(area)
    if bucket.shape != conf.shape[: bucket.ndim]:
        raise ValueError(f"calibrate_confidence: areas of shape {bucket.shape} for confidences of shape {conf.shape}")
    for name in SIZE_BUCKETS:
        rows = bucket == name
        if name in calibration and rows.any():
            out[rows] = calibrate_confidence(conf[rows], calibration[name])
    return out
