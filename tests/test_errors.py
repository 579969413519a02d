"""The error hierarchy: every exception snapper defines is a SnapperError, the user-input
branch keeps the builtin base callers catch, and user-given paths fail as one line."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from snapper import errors
from snapper.errors import (
    BadFileError,
    BadModelError,
    BadOptionError,
    ConfigError,
    InputNotFoundError,
    SnapperError,
    UserInputError,
    file_error,
)

REPO = Path(__file__).resolve().parents[1]
# Internal errors (a bug, a per-sample skip that is counted, a broken accounting): not the user's.
INTERNAL = {"snapper.batch.schema.AccountingError", "snapper.data.samples.SampleError"}


def _modules() -> list[str]:
    out = []
    for p in sorted((REPO / "snapper").rglob("*.py")):
        if p.name == "__main__.py":  # runs a command when imported
            continue
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_class_is_a_snapper_error() -> None:
    classes = _exception_classes()
    assert len(classes) >= 20, sorted(classes)  # the walk did find them
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, SnapperError))
    assert not outside, f"exception classes outside snapper.errors.SnapperError: {outside}"
    internal = sorted(name for name, cls in classes.items() if not issubclass(cls, UserInputError))
    assert set(internal) - {f"snapper.errors.{n}" for n in ("SnapperError",)} == INTERNAL, internal


@pytest.mark.parametrize("path, user_branch, builtin", [
    ("snapper.imageio.ImageError", BadFileError, ValueError),
    ("snapper.imageio.ImageTooLarge", BadFileError, ValueError),
    ("snapper.data.coco.CocoFormatError", BadFileError, ValueError),
    ("snapper.batch.schema.BatchInputError", BadFileError, ValueError),
    ("snapper.formats.common.FormatError", BadFileError, ValueError),
    ("snapper.data.manifest.ShardError", BadFileError, RuntimeError),
    ("snapper.data.reader.ShardProblem", BadFileError, RuntimeError),
    ("snapper.models.checkpoint.CheckpointError", BadModelError, ValueError),
    ("snapper.models.reference.ModelNotFoundError", BadModelError, FileNotFoundError),
    ("snapper.models.reference.NotRegisteredError", BadModelError, LookupError),
    ("snapper.models.trunks.WeightsError", BadOptionError, RuntimeError),
    ("snapper.integrations.labelstudio_images.LabelStudioRequestError", UserInputError, ValueError),
    ("snapper.integrations.cvat.CvatError", UserInputError, OSError),
    ("snapper.integrations.cvat.CvatNotFound", UserInputError, LookupError),
    ("snapper.integrations.cvat.CvatRefused", UserInputError, PermissionError),
    ("snapper.integrations.cvat.CvatUnreachable", UserInputError, ConnectionError),
    ("snapper.mlops.pyfunc.SnapRequestError", UserInputError, Exception),
    ("snapper.errors.ConfigError", BadOptionError, ValueError),
    ("snapper.errors.BadBoxError", UserInputError, ValueError),
])
def test_rebased_classes_keep_their_builtin_base(path: str, user_branch: type, builtin: type) -> None:
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, user_branch) and issubclass(cls, builtin)


def test_the_pyfunc_refusal_is_still_an_mlflow_exception() -> None:
    from snapper.mlops.pyfunc import SnapRequestError
    from snapper.mlops.tracking import mlflow

    e = SnapRequestError(3, "image_b64 is empty")
    assert isinstance(e, mlflow.exceptions.MlflowException) and isinstance(e, UserInputError)
    assert e.cause == "row 3: image_b64 is empty" and e.get_http_status_code() == 400


def test_os_errors_of_user_paths_become_one_line_naming_the_path(tmp_path: Path) -> None:
    try:
        open(tmp_path / "missing.json")
    except OSError as e:
        err = file_error(tmp_path / "missing.json", e)
    assert isinstance(err, InputNotFoundError) and isinstance(err, FileNotFoundError)
    assert str(err) == f"{tmp_path / 'missing.json'}: no such file or folder"
    try:
        open(tmp_path)
    except OSError as e:
        err = file_error(tmp_path, e)
    assert isinstance(err, BadFileError) and isinstance(err, OSError) and str(err).startswith(f"{tmp_path}: ")
    assert "\n" not in str(err)


def test_config_errors_are_option_errors() -> None:
    assert issubclass(ConfigError, errors.BadOptionError) and issubclass(ConfigError, ValueError)
