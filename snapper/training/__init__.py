"""The training loop and its parts: state, batches, schedule, presets, logging, DDP."""
