"""Models registered before the subpackage move still load and serve.

MLflow pickles a registered model's pyfunc class by import path. ``legacy/`` holds the
``python_model.pkl`` bytes that versions registered by earlier releases carry (the class at
``snapper.serve`` and, before that, ``snapper.registry``); each is put into a freshly
registered model, which must then load through plain MLflow and snap."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from snapper.mlops.pyfunc import SnapperPyfunc, encode_image
from tests.batchdata import tiny_checkpoint

LEGACY = Path(__file__).parent / "legacy"


@pytest.mark.parametrize("old_module", ["snapper.serve", "snapper.registry"])
def test_a_model_registered_with_an_old_class_path_loads_and_snaps(store, tmp_path: Path, photo: Path,
                                                                   old_module: str) -> None:
    pkl = (LEGACY / f"python_model_{old_module.replace('.', '_')}.pkl").read_bytes()
    assert old_module.encode() in pkl and b"snapper.mlops" not in pkl  # really the old path
    tracking, registry = store["tracking"], store["registry"]
    ck = tiny_checkpoint(tmp_path / "ck")
    with tracking.start_run("unit", run_name="legacy"):
        version = registry.register_checkpoint(None, ck, "unit-legacy")
    model_dir = registry.resolve_registered(f"models:/unit-legacy/{version}").parent
    while not (model_dir / "MLmodel").is_file():  # the pyfunc folder holding the checkpoint
        model_dir = model_dir.parent
    meta = yaml.safe_load((model_dir / "MLmodel").read_text())
    (model_dir / meta["flavors"]["python_function"]["python_model"]).write_bytes(pkl)

    sys.modules.pop(old_module, None)  # resolved on load, as in a fresh server process
    assert isinstance(pickle.loads(pkl), SnapperPyfunc)
    loaded = tracking.mlflow.pyfunc.load_model(f"models:/unit-legacy/{version}")
    rows = pd.DataFrame({"image_b64": [encode_image(photo)], "x": [18.0], "y": [8.0], "w": [54.0], "h": [34.0]})
    out = loaded.predict(rows)
    assert len(out) == 1 and np.isfinite(out[["x", "y", "w", "h"]].to_numpy()).all()


def test_old_module_paths_are_the_new_modules() -> None:
    import snapper.mlops.registry
    import snapper.registry  # noqa: F401  (through snapper.legacy)
    import snapper.train  # noqa: F401

    assert sys.modules["snapper.registry"] is snapper.mlops.registry
    assert sys.modules["snapper.train"] is sys.modules["snapper.training.loop"]
