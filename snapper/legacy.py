"""Module paths from before the subpackage move, kept importable for one release.

Why: MLflow pickles a registered model's pyfunc class by its import path, so versions
registered earlier name ``snapper.serve.SnapperPyfunc`` or ``snapper.registry.SnapperPyfunc``
and must still load; scripts written against the flat layout keep working too. An old path
imports the new module itself (same objects, no copy), and only when something asks for it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

MOVED: dict[str, str] = {
    "snapper.model": "snapper.models.net",
    "snapper.trunks": "snapper.models.trunks",
    "snapper.edges": "snapper.models.edges",
    "snapper.checkpoint": "snapper.models.checkpoint",
    "snapper.snap": "snapper.inference.snap",
    "snapper.train": "snapper.training.loop",
    "snapper.train_state": "snapper.training.state",
    "snapper.train_batches": "snapper.training.batches",
    "snapper.train_log": "snapper.training.log",
    "snapper.train_tracker": "snapper.training.tracker",
    "snapper.schedule": "snapper.training.schedule",
    "snapper.presets": "snapper.training.presets",
    "snapper.distributed": "snapper.training.distributed",
    "snapper.launch": "snapper.training.launch",
    "snapper.ema": "snapper.training.ema",
    "snapper.validation": "snapper.training.validation",
    "snapper.evaluate": "snapper.evaluation.evaluate",
    "snapper.metrics": "snapper.evaluation.metrics",
    "snapper.plots": "snapper.evaluation.plots",
    "snapper.tracking": "snapper.mlops.tracking",
    "snapper.registry": "snapper.mlops.registry",
    "snapper.serve": "snapper.mlops.pyfunc",
    "snapper.labelstudio": "snapper.integrations.labelstudio",
    "snapper.cvat": "snapper.integrations.cvat",
    "snapper.inbox": "snapper.batch.inbox",
    "snapper.batch.crops": "snapper.batch.image_work",
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old path to the module now holding it (``sys.modules`` gets both names)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module was executed under its own name."""


def install() -> None:
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
