"""Snapping boxes with a trained model: :class:`snapper.inference.snap.Snapper`."""
