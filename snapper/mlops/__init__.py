"""MLflow: runs and metrics, the model registry, the pyfunc wrapper. The only place MLflow is imported."""
