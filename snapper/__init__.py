"""snapper: snap rough bounding boxes tight to object edges.

The tree is the design (see ``docs/architecture.md``): core modules here (config, geometry,
crop, zoom, imageio, atomic, device, errors), then ``models/``, ``inference/``, ``training/``,
``evaluation/``, ``mlops/`` (the only MLflow importer), ``integrations/``, ``data/``,
``batch/``, ``formats/`` and ``cli/``.
"""

from snapper import legacy

__version__ = "0.1.0"
legacy.install()
