"""What a model was trained on: the dataset's name and kind (synthetic or real) and the sha256
of its shard manifests, so a registered version names its data and a checkpoint folder knows,
without MLflow, that it has only ever seen generated shapes.

Registration writes it beside the checkpoint as ``lineage.json`` (:data:`SIDECAR`); that file
travels with the registered model's artifacts. A checkpoint without one falls back to its saved
training config (``config.json`` ``train_config.data.train_shards``). The kind is read from the
dataset's name: the embedded generator's folders are ``synthetic*`` (``synthetic-n300-s0``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from snapper.atomic import atomic_write_text

SIDECAR = "lineage.json"
SYNTHETIC = "synthetic"
REAL = "real"
MANIFEST_SUFFIX = "-manifest.json"
REAL_DATA_HINT = ("train one on real photos (README 'Running on real COCO') and snap with it, "
                  "e.g. --model models:/snapper@champion")

_SHARD_RE = re.compile(r"^([A-Za-z0-9_]+)-[0-9]+\.tar$")


def dataset_kind(name: str | None) -> str | None:
    """``synthetic`` for the embedded generator's datasets, ``real`` for any other name."""
    if not name or name == "-":
        return None
    return SYNTHETIC if Path(name).name.startswith(SYNTHETIC) else REAL


def _manifest_of(url: str) -> Path | None:
    """The local ``<split>-manifest.json`` beside a shard (or the manifest itself)."""
    if "://" in url or url.startswith("pipe:"):
        return None
    p = Path(url)
    if p.name.endswith(MANIFEST_SUFFIX):
        return p
    m = _SHARD_RE.match(p.name)
    return p.parent / f"{m.group(1)}{MANIFEST_SUFFIX}" if m else None


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def split_lineage(shards: Sequence[str]) -> dict[str, Any]:
    """The manifests (path, sha256) behind a shard list, and the shards themselves."""
    manifests = sorted({str(m) for m in (_manifest_of(str(s)) for s in shards) if m is not None})
    return {"shards": [str(s) for s in shards],
            "manifests": [{"path": m, "sha256": _sha256(Path(m))} for m in manifests]}


def shard_lineage(train: Sequence[str], val: Sequence[str], name: str | None = None) -> dict[str, Any]:
    """A model's lineage from its train and held-out shard lists (small JSON); ``name`` is the
    dataset's name (default: the folder of the first train shard)."""
    if (not name or name == SYNTHETIC) and train:  # the flow's default name: the folder says which
        name = Path(str(train[0])).parent.name
    return {"dataset": name or "-", "kind": dataset_kind(name) or REAL,
            "train": split_lineage(train), "val": split_lineage(val)}


def digest(lineage: dict[str, Any], split: str) -> str:
    """The manifests' sha256 of one split, ``,``-joined (what a version tag shows)."""
    return ",".join(m["sha256"] or "?" for m in (lineage.get(split) or {}).get("manifests", [])) or "-"


def write_sidecar(checkpoint: str | os.PathLike[str], lineage: dict[str, Any]) -> Path:
    """``lineage.json`` beside ``model.pt``: the checkpoint folder knows its data without MLflow."""
    path = Path(checkpoint) / SIDECAR
    atomic_write_text(path, json.dumps(lineage, indent=1, sort_keys=True))
    return path


def read_lineage(checkpoint: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar, else the lineage implied by the checkpoint's saved training config; None
    when neither says anything."""
    folder = Path(checkpoint)
    try:
        data = json.loads((folder / SIDECAR).read_text())
        if isinstance(data, dict):
            return data
    except (OSError, ValueError):
        pass
    try:
        meta = json.loads((folder / "config.json").read_text())
        data_cfg = (meta.get("train_config") or {}).get("data") or {}
    except (OSError, ValueError, AttributeError):
        return None
    train = data_cfg.get("train_shards") or []
    return shard_lineage(train, data_cfg.get("val_shards") or []) if train else None


def synthetic_warning(checkpoint: str | os.PathLike[str]) -> str | None:
    """One line for a user about to snap real photos with a model that only saw generated shapes."""
    lineage = read_lineage(checkpoint)
    if not lineage or lineage.get("kind") != SYNTHETIC:
        return None
    return (f"warning: this model was trained only on synthetic shapes ({lineage.get('dataset')}); on real photos "
            f"it can make boxes worse: {REAL_DATA_HINT}")
