"""Edge distributions: soft targets, loss, decoding and confidence agree with each other."""

import torch

from snapper.models.edges import decode_edges, edge_loss, mass_within, soft_targets


def test_soft_targets_decode_back_exactly():
    pos = torch.tensor([[0.0, 0.25, 63.6, 64.0], [10.5, 31.01, 40.99, 12.0]])
    q = soft_targets(pos, 64, 65)
    assert torch.allclose(q.sum(-1), torch.ones(2, 4))
    logits = torch.log(q.clamp_min(1e-9))
    dec, conf = decode_edges(logits, 64, window=2, tolerance=2.0)
    assert torch.allclose(dec, pos, atol=1e-4)
    assert (conf > 0.99).all()
    # The loss of the perfect distribution is its entropy: lower than any shifted one.
    assert edge_loss(logits, pos, 64) < edge_loss(logits, pos + 2, 64)


def test_confidence_is_low_for_spread_distributions():
    sharp = torch.zeros(1, 4, 65)
    sharp[..., 30] = 20
    flat = torch.zeros(1, 4, 65)
    _, c_sharp = decode_edges(sharp, 64)
    _, c_flat = decode_edges(flat, 64)
    assert (c_sharp > 0.99).all() and (c_flat < 0.1).all()


def test_confidence_is_the_probability_of_being_within_tolerance():
    p = torch.zeros(1, 4, 65)
    p[..., 30] = 1.0  # all mass in the bin of position 30, which covers [29.5, 30.5)
    pos = torch.full((1, 4), 30.0)
    assert torch.allclose(mass_within(p, pos, 64, torch.full((1, 4), 0.5)), torch.ones(1, 4))
    assert torch.allclose(mass_within(p, pos, 64, torch.full((1, 4), 0.25)), torch.full((1, 4), 0.5))
    assert torch.allclose(mass_within(p, pos + 3, 64, torch.full((1, 4), 2.0)), torch.zeros(1, 4))
    flat = torch.full((1, 4, 65), 1 / 65)
    assert torch.allclose(mass_within(flat, pos, 64, torch.full((1, 4), 2.0)), torch.full((1, 4), 4 / 65))
