"""The network: trunks, the edge head and its decoding, checkpoints on disk."""
