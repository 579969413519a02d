"""snapper: snap rough bounding boxes tight to object edges."""

__version__ = "0.1.0"
