"""Snapper inside other tools: MLflow's model server, Label Studio, CVAT."""
