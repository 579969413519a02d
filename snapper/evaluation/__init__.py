"""Table 1: every method on the same boxes, metrics, plots."""
