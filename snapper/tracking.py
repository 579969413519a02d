"""MLflow tracking and model registry, local by default.

Why a wrapper at all: MLflow's defaults would put runs in a deprecated ``./mlruns`` file
store wherever the process happens to start, phone home with telemetry, and (through
``log_model``) spend a long time inferring pip requirements. Here:

* the tracking/registry store is a SQLite database inside the project,
  ``sqlite:///<project>/mlflow/mlflow.db`` (project = ``$SNAPPER_HOME`` or the working
  directory), unless ``MLFLOW_TRACKING_URI`` says otherwise (a server, another database);
* artifacts of a SQLite store go next to the database, ``<project>/mlflow/artifacts``, set
  explicitly on every experiment we create, so nothing lands in ``./mlruns``;
* telemetry is off unless the user opted in (``MLFLOW_DISABLE_TELEMETRY``/``DO_NOT_TRACK``
  defaults, set before MLflow is imported);
* a registered model is a pyfunc wrapper around our checkpoint directory
  (``model.pt`` + ``config.json``), logged with explicit requirements and signature: no
  inference, no network.

Logging helpers never fall back to MLflow's implicit "Default" experiment: they need an
active run (from :func:`start_run`) or an explicit ``run_id``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")  # MLflow itself only honours "true"; the line above is what counts

import mlflow  # noqa: E402  (after the telemetry defaults on purpose)
import mlflow.pyfunc  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
import pandas as pd  # noqa: E402

from snapper.metrics import metric_key  # noqa: E402

log = logging.getLogger(__name__)

HOME_ENV = "SNAPPER_HOME"
DEFAULT_EXPERIMENT = "snapper"
DEFAULT_MODEL_NAME = "snapper"
MODEL_ARTIFACT = "model"  # name of the pyfunc model inside a run
CHECKPOINT_FILES = ("model.pt", "config.json")

# MLflow limits (mlflow.utils.validation): longer values are rejected, not truncated.
MAX_PARAM_VALUE = 6000
MAX_KEY = 250

# Private MLflow hook: the artifact root a SqlAlchemy store gives experiments created without
# one, including the implicit "Default" experiment created with the database. Without it that
# is ``<cwd>/mlruns/0``; we point it at the project's artifact folder as a second line of defence.
_ARTIFACT_ROOT_ENV = "_MLFLOW_SERVER_ARTIFACT_ROOT"
_artifact_env_set_by_us: str | None = None

# Runtime packages a registered model needs (pinned to what logged it); listed, not inferred.
_RUNTIME_PACKAGES = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "pyyaml")


# --------------------------------------------------------------------------------- locations


def project_root() -> Path:
    return Path(os.environ.get(HOME_ENV) or os.getcwd()).expanduser().resolve()


def default_tracking_uri() -> str:
    return f"sqlite:///{(project_root() / 'mlflow' / 'mlflow.db').as_posix()}"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for in-memory or other schemes)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest).expanduser().resolve()


def artifact_root(uri: str | None = None) -> Path | None:
    """Where artifacts of a SQLite store go: ``artifacts/`` beside the database file.

    None for other stores (a tracking server decides for itself).
    """
    uri = uri or tracking_uri()
    db = _sqlite_path(uri)
    if db is not None:
        return db.parent / "artifacts"
    if uri.startswith("sqlite:"):  # in-memory: fall back to the project
        return project_root() / "mlflow" / "artifacts"
    return None


def configure() -> str:
    """Point MLflow (tracking and registry) at our store; returns the tracking URI.

    Idempotent and cheap; every public function here calls it, so a change of
    ``SNAPPER_HOME`` or ``MLFLOW_TRACKING_URI`` between calls is honoured.
    """
    global _artifact_env_set_by_us
    uri = tracking_uri()
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    root = artifact_root(uri)
    current = os.environ.get(_ARTIFACT_ROOT_ENV)
    if root is not None and (current is None or current == _artifact_env_set_by_us):
        root.mkdir(parents=True, exist_ok=True)
        os.environ[_ARTIFACT_ROOT_ENV] = _artifact_env_set_by_us = str(root)
    elif root is None and current is not None and current == _artifact_env_set_by_us:
        del os.environ[_ARTIFACT_ROOT_ENV]
        _artifact_env_set_by_us = None
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _client() -> "mlflow.MlflowClient":
    configure()
    return mlflow.MlflowClient()


def ensure_experiment(name: str = DEFAULT_EXPERIMENT) -> str:
    """The id of experiment ``name``, created (with our artifact location) when missing."""
    client = _client()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root()
        location = (root / _safe_dirname(name)).as_uri() if root is not None else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            exp = client.get_experiment_by_name(name)  # created concurrently by another process
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise RuntimeError(f"MLflow experiment {name!r} ({exp.experiment_id}) is deleted; restore it "
                           f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or pick another name")
    return exp.experiment_id


def _safe_dirname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment"


# ------------------------------------------------------------------------------------- runs


@contextlib.contextmanager
def start_run(
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    nested: bool = False,
) -> Iterator["mlflow.ActiveRun"]:
    """A run in ``experiment`` (created in our store when missing); ``run_id`` resumes one.

    Ends the run FAILED when the body raises, FINISHED otherwise (MLflow's own behaviour).
    """
    exp_id = ensure_experiment(experiment)
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id, run_name=run_name,
                          tags={k: str(v) for k, v in (tags or {}).items()}, nested=nested) as run:
        yield run


def _run_id(run_id: str | None) -> str:
    configure()
    if run_id:
        return run_id
    active = mlflow.active_run()
    if active is None:
        # MLflow would silently open a run in the "Default" experiment; refuse instead.
        raise RuntimeError("no active MLflow run: use snapper.tracking.start_run(...) or pass run_id")
    return active.info.run_id


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dataclass/dict -> ``{"model.backbone": "resnet50", ...}``."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"expected a dataclass instance or a mapping, got {type(cfg).__name__}")
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, (list, tuple, dict)) else str(value)
    if len(text) > MAX_PARAM_VALUE:
        text = text[: MAX_PARAM_VALUE - 15] + "...[truncated]"
    return text


def log_config(cfg: Any, prefix: str = "", run_id: str | None = None, artifact_file: str | None = "config.json") -> dict[str, str]:
    """Log a config as flat params (``model.backbone`` ...) plus the exact JSON as an artifact.

    Params are the searchable summary (MLflow caps values at 6000 characters: longer ones are
    truncated, the JSON artifact keeps them whole). MLflow params are immutable: re-logging a
    resumed run with the same values is fine, a changed value raises naming the keys.
    Returns the params logged.
    """
    rid = _run_id(run_id)
    params = {metric_key(k)[:MAX_KEY]: _param_value(v) for k, v in flatten(cfg, prefix).items()}
    client = mlflow.MlflowClient()
    existing = client.get_run(rid).data.params
    changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
    if changed:
        raise ValueError(f"run {rid}: config differs from the one already logged for {changed} "
                         f"(MLflow params are immutable; start a new run)")
    new = [Param(k, v) for k, v in params.items() if k not in existing]
    for i in range(0, len(new), 100):  # MLflow's batch limit
        client.log_batch(rid, params=new[i : i + 100])
    if artifact_file:
        data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
        client.log_dict(rid, data, artifact_file)
    return params


def log_metrics(metrics: Mapping[str, Any], step: int | None = None, run_id: str | None = None) -> dict[str, float]:
    """Log numbers (numpy/torch scalars welcome); None values are skipped.

    Names are made MLflow-safe with :func:`snapper.metrics.metric_key`; two names that
    collapse onto one raise rather than overwrite each other. Returns what was logged.
    """
    rid = _run_id(run_id)
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        if value is None:
            continue
        name = metric_key(key)
        if name in clean:
            raise ValueError(f"metric names {key!r} and another collapse onto {name!r}")
        clean[name] = float(value)
    if clean:
        ts = int(time.time() * 1000)
        items = [Metric(k, v, ts, step or 0) for k, v in clean.items()]
        client = mlflow.MlflowClient()
        for i in range(0, len(items), 1000):
            client.log_batch(rid, metrics=items[i : i + 1000])
    return clean


def log_artifact(path: str | os.PathLike[str], artifact_path: str | None = None, run_id: str | None = None) -> None:
    """Log a file or a whole directory under ``artifact_path`` of the run."""
    rid = _run_id(run_id)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"artifact {p} does not exist")
    client = mlflow.MlflowClient()
    if p.is_dir():
        client.log_artifacts(rid, str(p), artifact_path)
    else:
        client.log_artifact(rid, str(p), artifact_path)


# ------------------------------------------------------------------------------- the model


class SnapperPyfunc(mlflow.pyfunc.PythonModel):
    """Serve a checkpoint through MLflow's pyfunc interface.

    Input rows: ``image`` (path or URL the server can read), rough ``x, y, w, h`` (COCO, original
    pixels), optional ``buffer_ratio``. Output rows: snapped ``x, y, w, h`` and ``conf_<edge>``.
    Rows of one image are snapped together so each image is decoded once.
    """

    def load_context(self, context: Any) -> None:
        from snapper.snap import Snapper  # lazy: torch is only needed when the model is served

        self._snapper = Snapper.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import numpy as np

        from snapper.geometry import EDGE_NAMES

        df = pd.DataFrame(model_input).reset_index(drop=True)
        missing = [c for c in ("image", "x", "y", "w", "h") if c not in df.columns]
        if missing:
            raise ValueError(f"snapper model input lacks column(s) {missing}")
        default_ratio = float((params or {}).get("buffer_ratio", 1.0))
        ratio = df["buffer_ratio"].fillna(default_ratio) if "buffer_ratio" in df else pd.Series(default_ratio, index=df.index)
        boxes = np.full((len(df), 4), np.nan)
        conf = np.full((len(df), 4), np.nan)
        for (image, r), rows in df.groupby([df["image"].astype(str), ratio], sort=False):
            idx = rows.index.to_numpy()
            res = self._snapper.snap(image, rows[["x", "y", "w", "h"]].to_numpy(np.float64), buffer_ratio=float(r))
            boxes[idx], conf[idx] = res.boxes, res.confidence
        out = pd.DataFrame(boxes, columns=["x", "y", "w", "h"])
        for j, e in enumerate(EDGE_NAMES):
            out[f"conf_{e}"] = conf[:, j]
        return out


def _signature() -> "mlflow.models.ModelSignature":
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "image"), *[ColSpec("double", c) for c in "xywh"],
                     ColSpec("double", "buffer_ratio", required=False)])
    outputs = Schema([*[ColSpec("double", c) for c in "xywh"],
                      *[ColSpec("double", f"conf_{e}") for e in ("left", "top", "right", "bottom")]])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("buffer_ratio", "double", 1.0)]))


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in _RUNTIME_PACKAGES:
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def check_checkpoint(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    missing = [f for f in CHECKPOINT_FILES if not (p / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{p} is not a snapper checkpoint directory (missing {', '.join(missing)})")
    return p


class _DropPickleWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # our class pickles by reference: nothing to warn about
        return "serialized using CloudPickle" not in record.getMessage()


def register_checkpoint(
    run_id: str | None,
    checkpoint_path: str | os.PathLike[str],
    name: str = DEFAULT_MODEL_NAME,
    tags: Mapping[str, Any] | None = None,
) -> int:
    """Log the checkpoint directory as a pyfunc model of run ``run_id`` (default: the active
    run) and register it as a new version of ``name``; returns the version number.

    The snapper package source goes with it (``code_paths``) and requirements are pinned from
    the installed versions, so the registry entry is self-contained and nothing is inferred
    (requirement inference imports the model and can take minutes).
    """
    ckpt = check_checkpoint(checkpoint_path)
    rid = _run_id(run_id)
    active = mlflow.active_run()
    package_dir = Path(__file__).resolve().parent
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    quiet = _DropPickleWarning()
    with contextlib.ExitStack() as stack:
        if active is None or active.info.run_id != rid:
            stack.enter_context(mlflow.start_run(run_id=rid, nested=active is not None))
        pyfunc_log.addFilter(quiet)
        stack.callback(pyfunc_log.removeFilter, quiet)
        # An input example would make MLflow load the model and run it at logging time.
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=SnapperPyfunc(),
            artifacts={"checkpoint": str(ckpt)},
            code_paths=[str(package_dir)],
            pip_requirements=_pip_requirements(),
            signature=_signature(),
            registered_model_name=name,
        )
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in {"checkpoint": str(ckpt.resolve()), **(tags or {})}.items():
        client.set_model_version_tag(name, str(version), key, str(value))
    log.info("registered %s version %d from %s (run %s)", name, version, ckpt, rid)
    return version


# ------------------------------------------------------------------------------ resolution

_NAME_RE = re.compile(r"^[\w.\- ]+$")


def latest_version(name: str) -> int:
    """Highest registered version of ``name`` (LookupError when there is none)."""
    client = _client()
    escaped = name.replace("'", "\\'")
    versions = [int(v.version) for v in client.search_model_versions(f"name='{escaped}'")]
    if not versions:
        raise LookupError(f"no registered model named {name!r} in {tracking_uri()}")
    return max(versions)


def find_checkpoint(root: str | os.PathLike[str]) -> Path:
    """The checkpoint folder in a checkpoint dir, a ``model.pt`` file, or a pyfunc model dir."""
    root = Path(root)
    if root.is_file():
        root = root.parent
    if all((root / f).is_file() for f in CHECKPOINT_FILES):
        return root
    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        import yaml

        meta = yaml.safe_load(mlmodel.read_text()) or {}
        rel = (((meta.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}).get("checkpoint", {}).get("path")
        if rel:
            return check_checkpoint(root / rel)
    found = sorted({p.parent for p in root.rglob(CHECKPOINT_FILES[0]) if (p.parent / CHECKPOINT_FILES[1]).is_file()})
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"{root}: no snapper checkpoint ({' + '.join(CHECKPOINT_FILES)}) found")
    raise ValueError(f"{root}: several checkpoints found ({[str(f) for f in found]}); point at one")


def _normalise_ref(ref: str) -> str:
    """A models:/ or runs:/ URI with 'latest', bare names and aliases pinned to a version."""
    if ref.startswith("runs:/"):
        return ref
    if ref.startswith("models:/"):
        body = ref[len("models:/"):].strip("/")
        if "@" in body:
            name, alias = body.split("@", 1)
            return f"models:/{name}/{_client().get_model_version_by_alias(name, alias).version}"
        parts = body.rsplit("/", 1)
        if len(parts) == 1:  # models:/<logged model id> (MLflow 3) or models:/<name>
            if parts[0].startswith("m-"):
                return ref
            return f"models:/{parts[0]}/{latest_version(parts[0])}"
        name, version = parts
        if version.lower() == "latest":
            return f"models:/{name}/{latest_version(name)}"
        if not version.isdigit():
            raise ValueError(f"{ref}: version must be a number, 'latest' or '@alias' (stages are not used)")
        return f"models:/{name}/{int(version)}"
    return f"models:/{ref}/{latest_version(ref)}"


def _local_dir(uri: str) -> Path | None:
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    if "://" not in uri and ":" not in uri.split("/", 1)[0]:
        return Path(uri)
    return None


def resolve_model(ref: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A local checkpoint directory (``model.pt`` + ``config.json``) for ``ref``.

    ``ref`` may be a local path (checkpoint dir, its ``model.pt``, or a downloaded pyfunc
    model), ``models:/<name>/<version|latest>``, ``models:/<name>@<alias>``, a bare registered
    name (= its latest version), or ``runs:/<run_id>/model``. An existing path wins over a
    registered name. Models in a local artifact store are used in place; remote ones are
    downloaded once into ``cache_dir`` (default ``<project>/mlflow/cache``), keyed by the
    pinned version, so "latest" always means the newest at call time.
    """
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.exists():
        try:
            return find_checkpoint(path)
        except FileNotFoundError:
            # A folder that merely shares a registered model's name (e.g. the "snapper"
            # package in a checkout) must not shadow the registry.
            if not _NAME_RE.match(text):
                raise
    if not (text.startswith(("models:/", "runs:/")) or _NAME_RE.match(text)):
        raise FileNotFoundError(f"{text}: no such checkpoint path, and not a models:/ or runs:/ URI "
                                f"or registered model name")
    uri = _normalise_ref(text)
    if uri.startswith("models:/"):
        from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

        local = _local_dir(ModelsArtifactRepository.get_underlying_uri(uri))
        if local is not None and local.is_dir():
            return find_checkpoint(local)
    cache = Path(cache_dir) if cache_dir else project_root() / "mlflow" / "cache"
    target = cache / _safe_dirname(uri.replace(":/", "_").replace("/", "_"))
    if not target.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
            try:
                os.replace(tmp, target)
            except OSError:  # another process finished the same download first
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return find_checkpoint(target)
