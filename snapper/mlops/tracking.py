"""MLflow tracking and model registry, local by default.

Why a wrapper at all: MLflow's defaults would put runs in a deprecated ``./mlruns`` file
store wherever the process happens to start, phone home with telemetry, and (through
``log_model``) spend a long time inferring pip requirements. Here:

* the tracking/registry store is a SQLite database inside the project,
  ``sqlite:///<project>/mlflow/mlflow.db`` (project = :func:`snapper.home.home`), unless
  ``MLFLOW_TRACKING_URI`` says otherwise (a server, another database);
* artifacts of a SQLite store go next to the database, ``<project>/mlflow/artifacts``, set
  explicitly on every experiment we create and on the database's implicit "Default"
  experiment when we create the database, so nothing lands in ``./mlruns``. Locations go
  to MLflow as arguments, never through the process environment;
* telemetry is off unless the user opted in (``MLFLOW_DISABLE_TELEMETRY``/``DO_NOT_TRACK``
  defaults, set before MLflow is imported);
* registering and resolving models lives in :mod:`snapper.mlops.registry`;
* experiments open on the numbers in MLflow 3's UI: tagged as model training
  (``mlflow.experimentKind``), with a saved runs-list view (``Table 1``) whose columns are the
  headline metrics (:data:`HEADLINE_METRICS`), and links that ask for the model-training view.

Metric names are grouped for MLflow's chart sections, which it orders alphabetically by the
part before the last ``/``: ``train/*`` (loss, learning rate), then everything measured on
the held-out split under ``val/`` (the validation curves ``val/score``, ``val/all/*``, the
best/last summaries, and the final evaluation ``val/eval/<method>/<size>/<metric>``), and the
headline numbers of the run's model, rounded to 0.01, as ``table1/1_miou``,
``table1/2_iou_gt_0.9``, ... ``table1/7_score`` (Table 1's order), which are also the
runs-list columns.

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
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")  # MLflow itself only honours "true"; the line above is what counts
# Registered models are small folders resolved in place or fetched once: a progress bar per
# fetch only buries the lines a user reads (read by MLflow at each download; set it to override)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402  (after the telemetry defaults on purpose)
import mlflow.pyfunc  # noqa: E402
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param  # noqa: E402

from snapper.evaluation.metrics import metric_key  # noqa: E402
from snapper.home import home  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "snapper"

# MLflow UI conventions (MLflow 3): the experiment kind tag, the description tag of runs and
# experiments, saved runs-list views (experiment tags), and the URL switch of its two views.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."
TABLE1_VIEW = "table1"
ML_VIEW = "workflowType=machine_learning"
# The run's model on the held-out split: Table 1 overall (in the paper's column order), then
# the selection score. Logged rounded to 0.01 as ``table1/<n>_<metric>`` (:func:`table1_name`),
# so MLflow's alphabetical columns and charts keep Table 1's order and read at a glance.
HEADLINE_METRICS = ("miou", "iou_gt_0.9", "edge_lt_1px", "edge_lt_3px", "corner_lt_1px", "corner_lt_3px", "score")
TABLE1_PREFIX = "table1/"
HEADLINE_DIGITS = 2
VIEW_COLUMNS = ("miou", "iou_gt_0.9", "edge_lt_1px", "corner_lt_1px", "score")  # what fits a laptop screen
CI_EXPERIMENT = "snapper-ci"  # where smoke runs are tracked (snapper.training.presets: cpu-tiny)
PREFECT_LINK_TAG = "prefect.flow_run_url"

# MLflow limits (mlflow.utils.validation): longer values are rejected, not truncated.
MAX_PARAM_VALUE = 6000
MAX_KEY = 250

_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")  # what mlflow.set_*_uri export

# --------------------------------------------------------------------------------- locations


def project_root() -> Path:
    """The project home (:func:`snapper.home.home`), where the local store lives."""
    return home()


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
    uri = tracking_uri()
    db = _sqlite_path(uri)
    root = artifact_root(uri)
    if db is not None and root is not None and not db.exists():
        _create_store(uri, db, root)
    # MLflow's setters also export the URI to the environment (for subprocesses); the
    # environment is the caller's, so it is put back as it was: MLflow keeps the URI in its own
    # module state, and a subprocess finds the same store the way this process did.
    saved = {name: os.environ.get(name) for name in _URI_ENV}
    try:
        if mlflow.get_tracking_uri() != uri:
            mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            elif os.environ.get(name) != value:
                os.environ[name] = value
    return uri


def _create_store(uri: str, db: Path, root: Path) -> None:
    """Create the SQLite database with its implicit "Default" experiment's artifacts under
    ``root``. MLflow would otherwise create it on first use with ``<cwd>/mlruns`` (or what the
    ``_MLFLOW_SERVER_ARTIFACT_ROOT`` variable says): here the root is an argument instead."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    store = SqlAlchemyStore(uri, str(root))
    store.engine.dispose()


def has_active_run() -> bool:
    """Whether the caller is inside an MLflow run (training then nests its own run in it)."""
    return mlflow.active_run() is not None


def mlflow_client() -> "mlflow.MlflowClient":
    configure()
    return mlflow.MlflowClient()


def ensure_experiment(name: str = DEFAULT_EXPERIMENT) -> str:
    """The id of experiment ``name``, created (with our artifact location) when missing."""
    client = mlflow_client()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root()
        location = (root / safe_dirname(name)).as_uri() if root is not None else None
        try:
            exp_id = client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            exp = client.get_experiment_by_name(name)  # created concurrently by another process
            if exp is None:
                raise
        else:
            _dress_experiment(client, exp_id, {})
            return exp_id
    if exp.lifecycle_stage != "active":
        raise RuntimeError(f"MLflow experiment {name!r} ({exp.experiment_id}) is deleted; restore it "
                           f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or pick another name")
    _dress_experiment(client, exp.experiment_id, exp.tags)
    return exp.experiment_id


def _dress_experiment(client: "mlflow.MlflowClient", exp_id: str, tags: Mapping[str, str]) -> None:
    """The tags that make MLflow open the experiment on its runs and numbers (set once)."""
    wanted = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, SAVED_VIEW_PREFIX + TABLE1_VIEW: _table1_view()}
    if NOTE_TAG not in tags:
        wanted[NOTE_TAG] = ("Snapper training and evaluation runs. Runs list: the saved view **Table 1** "
                            "(Views menu) shows the headline metrics of each run's model on the held-out "
                            "split; a run's charts start with the training loss and validation curves.")
    for key, value in wanted.items():
        if tags.get(key) != value:
            try:
                client.set_experiment_tag(exp_id, key, value)
            except mlflow.exceptions.MlflowException as e:  # cosmetic: never fail a run for it
                log.debug("could not set %s on experiment %s: %s", key, exp_id, e)


def _table1_view() -> str:
    """A saved runs-list view (the envelope MLflow 3.17's Views menu writes) with the headline
    metrics as columns."""
    columns = ["attributes.`Models`", *(f"metrics.`{table1_name(m)}`" for m in VIEW_COLUMNS)]
    state = json.dumps({"selectedColumns": columns, "runsHiddenMode": "SHOW_ALL"}, sort_keys=True)
    return json.dumps({"name": "Table 1", "createdAt": 0, "updatedAt": 0, "state": state}, sort_keys=True)


def table1_name(metric: str) -> str:
    """``miou`` -> ``table1/1_miou``: the MLflow name of a headline number (sorts in Table 1 order)."""
    return f"{TABLE1_PREFIX}{HEADLINE_METRICS.index(metric) + 1}_{metric}"


def safe_dirname(name: str) -> str:
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


def active_run_id(run_id: str | None) -> str:
    configure()
    if run_id:
        return run_id
    active = mlflow.active_run()
    if active is None:
        # MLflow would silently open a run in the "Default" experiment; refuse instead.
        raise RuntimeError("no active MLflow run: use snapper.mlops.tracking.start_run(...) or pass run_id")
    return active.info.run_id


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dataclass/dict -> ``{"model.trunk": "resnet50", ...}``."""
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
    """Log a config as flat params (``model.trunk`` ...) plus the exact JSON as an artifact.

    Params are the searchable summary (MLflow caps values at 6000 characters: longer ones are
    truncated, the JSON artifact keeps them whole). MLflow params are immutable: re-logging a
    resumed run with the same values is fine, a changed value raises naming the keys.
    Returns the params logged.
    """
    rid = active_run_id(run_id)
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

    Names are made MLflow-safe with :func:`snapper.evaluation.metrics.metric_key`; two names that
    collapse onto one raise rather than overwrite each other. Returns what was logged.
    """
    rid = active_run_id(run_id)
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
    rid = active_run_id(run_id)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"artifact {p} does not exist")
    client = mlflow.MlflowClient()
    if p.is_dir():
        client.log_artifacts(rid, str(p), artifact_path)
    else:
        client.log_artifact(rid, str(p), artifact_path)


def log_evaluation(metrics: Mapping[str, float], files: "list[str | os.PathLike[str]]", run_id: str | None = None,
                   prefix: str = "eval", headline: Mapping[str, float] | None = None) -> None:
    """An evaluation's metrics (as ``<prefix>/<method>/<size>/<metric>``), the run model's
    ``headline`` numbers (rounded, as :func:`table1_name`) and its files (under ``eval/``) in
    run ``run_id`` (default: the active run)."""
    rid = active_run_id(run_id)
    log_metrics({f"{prefix}/{k}": v for k, v in metrics.items()}, run_id=rid)
    if headline:
        log_metrics({table1_name(k): round(float(v), HEADLINE_DIGITS) for k, v in headline.items()
                     if k in HEADLINE_METRICS}, run_id=rid)
    for p in files:
        log_artifact(p, "eval", run_id=rid)


def nest_run(child_run_id: str, parent_run_id: str) -> None:
    """Make ``child_run_id`` a nested run of ``parent_run_id`` (MLflow's ``mlflow.parentRunId``
    tag, what ``start_run(nested=True)`` sets): the regression baseline, trained in a process
    of its own at the same time, shows under its model's run, one row per training."""
    mlflow_client().set_tag(child_run_id, "mlflow.parentRunId", parent_run_id)


DATASET_CONTEXT_TAG = "mlflow.data.context"  # what MLflow's UI groups a run's datasets by


def log_datasets(run_id: str, datasets: "list[tuple[str, str, str, str]]") -> None:
    """Record ``(name, digest, source, context)`` datasets as the run's inputs (MLflow's
    "Datasets" on the run page): metadata only, nothing is read or uploaded."""
    inputs = [DatasetInput(Dataset(name=name, digest=digest[:36], source_type="local", source=json.dumps({"uri": source})),
                           [InputTag(DATASET_CONTEXT_TAG, context)]) for name, digest, source, context in datasets]
    if inputs:
        mlflow_client().log_inputs(run_id, datasets=inputs)


def log_json(obj: Any, artifact_file: str, run_id: str) -> None:
    """A small JSON artifact on the run (what is too long for tags)."""
    mlflow_client().log_dict(run_id, obj, artifact_file)


def describe_run(run_id: str, text: str, tags: Mapping[str, Any] | None = None) -> None:
    """The run's description (markdown, shown on its page and in the runs list) and tags."""
    client = mlflow_client()
    client.set_tag(run_id, NOTE_TAG, text)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, str(value))


# ------------------------------------------------------------------------------------ links


def server_url() -> str | None:
    """The MLflow server the store is reached through (``MLFLOW_TRACKING_URI`` over HTTP), else None."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def _run_route(run_id: str) -> str:
    """MLflow UI's route to a run (``#/experiments/<id>/runs/<run_id>``; without the experiment
    when the run cannot be read: a missing link must not fail a report)."""
    try:
        exp_id = mlflow_client().get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001
        return f"#/runs/{run_id}"
    return f"#/experiments/{exp_id}/runs/{run_id}"


def run_link(run_id: str | None, base: str | None = None) -> str | None:
    """A browser link to the run in MLflow's model-training view, on ``base`` (a UI serving
    this store) or the tracking server; None when neither is known."""
    base = (base or server_url() or "").rstrip("/")
    if not run_id or not base:
        return None
    return f"{base}/{_run_route(run_id)}?{ML_VIEW}"


def ui_run_link(run_id: str, base: str | None = None) -> str:
    """A link for markdown shown inside MLflow's own UI (descriptions): absolute when a UI is
    known, else the UI's relative route, which works on whatever host serves the page."""
    return run_link(run_id, base) or _run_route(run_id)


def experiment_link(experiment_id: str, base: str | None = None) -> str | None:
    """The experiment's runs list with the ``Table 1`` view (metric columns), or None."""
    base = (base or server_url() or "").rstrip("/")
    if not base:
        return None
    return f"{base}/#/experiments/{experiment_id}/runs?{ML_VIEW}&viewStateShareKey={TABLE1_VIEW}"


def runs_link(run_id: str | None, base: str | None = None) -> str | None:
    """The runs list (``Table 1`` view) of run ``run_id``'s experiment, when a UI is known."""
    base = base or server_url()
    if not run_id or not base:
        return None
    return experiment_link(mlflow_client().get_run(run_id).info.experiment_id, base)


def model_version_link(name: str, version: int | str, base: str | None = None) -> str | None:
    base = (base or server_url() or "").rstrip("/")
    return f"{base}/#/models/{name}/versions/{version}" if base else None
