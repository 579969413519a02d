"""Model references -> a local checkpoint folder, the one way every command finds its model.

A reference is a checkpoint folder (or its ``model.pt``, or a downloaded pyfunc model), or a
registry reference: ``models:/<name>/<version|latest>``, ``models:/<name>@<alias>``, a bare
registered name, ``runs:/<run_id>/model``. A folder resolves here without MLflow, so
``snapper snap --model runs/x/best`` never pays for importing it (seconds on a small
machine); only a registry reference imports :mod:`snapper.mlops.registry`, on first use.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from snapper.errors import BadModelError
from snapper.models.checkpoint import CONFIG_FILE, MODEL_FILE, ModelNotFoundError

MODEL_NAME = "snapper"  # the production registered model
CHAMPION_ALIAS = "champion"
DEFAULT_MODEL = f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}"  # what every command snaps with by default
CHECKPOINT_FILES = (MODEL_FILE, CONFIG_FILE)

_NAME_RE = re.compile(r"^[\w.\- ]+$")


class NotRegisteredError(BadModelError, LookupError):
    """A registry reference with nothing behind it (no such name, version or alias)."""


def is_registry_ref(ref: str | os.PathLike[str]) -> bool:
    text = os.fspath(ref)
    return text.startswith(("models:/", "runs:/"))


def check_checkpoint(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    missing = [f for f in CHECKPOINT_FILES if not (p / f).is_file()]
    if missing:
        raise ModelNotFoundError(f"{p} is not a snapper checkpoint directory (missing {', '.join(missing)})")
    return p


def find_checkpoint(root: str | os.PathLike[str]) -> Path:
    """The checkpoint folder in a checkpoint dir, a ``model.pt`` file, or a pyfunc model dir."""
    root = Path(root)
    if root.is_file():
        root = root.parent
    if all((root / f).is_file() for f in CHECKPOINT_FILES):
        return root
    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        meta = yaml.safe_load(mlmodel.read_text()) or {}
        rel = (((meta.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}).get("checkpoint", {}).get("path")
        if rel:
            return check_checkpoint(root / rel)
    found = sorted({p.parent for p in root.rglob(CHECKPOINT_FILES[0]) if (p.parent / CHECKPOINT_FILES[1]).is_file()})
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelNotFoundError(f"{root}: no snapper checkpoint ({' + '.join(CHECKPOINT_FILES)}) found")
    raise BadModelError(f"{root}: several checkpoints found ({[str(f) for f in found]}); point at one")


def local_checkpoint(ref: str | os.PathLike[str]) -> Path | None:
    """The checkpoint folder ``ref`` names on disk, or None when it is a registry reference.

    An existing path wins over a registered name, except a folder that merely shares a
    registered model's name (e.g. the ``snapper`` package folder of a checkout)."""
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if not is_registry_ref(text) and path.exists():
        try:
            return find_checkpoint(path)
        except ModelNotFoundError:
            if not _NAME_RE.match(text):
                raise
    if not (is_registry_ref(text) or _NAME_RE.match(text)):
        raise ModelNotFoundError(f"{text}: no such checkpoint path, and not a models:/ or runs:/ URI "
                                 f"or registered model name")
    return None


def resolve_model(ref: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A local checkpoint folder (``model.pt`` + ``config.json``) for any model reference (module
    doc); registry references through :func:`snapper.mlops.registry.resolve_registered`."""
    local = local_checkpoint(ref)
    if local is not None:
        return local
    from snapper.mlops import registry  # lazily: only registry references pay for MLflow

    return registry.resolve_registered(os.fspath(ref), cache_dir)


def pin_model_ref(ref: str | os.PathLike[str]) -> str:
    """``ref`` with 'latest', bare names and aliases pinned to a version (a folder unchanged),
    so that the model a long-running process loaded is the one it reports."""
    text = os.fspath(ref)
    if local_checkpoint(text) is not None:
        return text
    from snapper.mlops import registry  # lazily, as in resolve_model

    return registry.pin_model_ref(text)
