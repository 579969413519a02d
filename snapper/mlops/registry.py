"""The model registry: registering a checkpoint as an MLflow model, the champion alias, and
:func:`resolve_model`, the one way every command turns a model reference (checkpoint folder,
``models:/name/3``, ``models:/name@alias``, ``runs:/...``) into a local checkpoint folder.

A registered model is a pyfunc wrapper (:class:`snapper.integrations.serve.SnapperPyfunc`) around our
checkpoint directory (``model.pt`` + ``config.json``), logged with explicit requirements and
signature: no inference, no network.

**Champion, not latest.** Whatever serves or snaps in production uses :data:`snapper.models.reference.DEFAULT_MODEL`
(``models:/snapper@champion``). A new version takes the alias only when it beats the current
champion on the same evaluation boxes (:func:`decide_champion`, recorded on the version by
:func:`record_champion_check`); smoke runs register under :data:`CI_MODEL_NAME` and the
synthetic demo under :data:`DEMO_MODEL_NAME` instead. A person promotes or rolls back with
``snapper promote`` (:mod:`snapper.mlops.promote`: the same gate, every move recorded).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from snapper.errors import BadModelError

# SnapperPyfunc is also importable from here: versions logged before snapper.integrations.serve existed pickled it so.
from snapper.mlops.pyfunc import SnapperPyfunc, signature
from snapper.mlops.tracking import active_run_id, mlflow, mlflow_client, project_root, safe_dirname, tracking_uri
from snapper.models.reference import CHAMPION_ALIAS, MODEL_NAME, NotRegisteredError, check_checkpoint, find_checkpoint

log = logging.getLogger(__name__)

CI_MODEL_NAME = "snapper-ci"  # where smoke runs register (never under the production name)
SMOKE_PRESETS = frozenset({"cpu-tiny"})
DEMO_MODEL_NAME = "snapper-demo"  # where the synthetic demo registers (`make demo`, train-snapper/demo)
DEMO_PRESETS = frozenset({"demo"})
MODEL_ARTIFACT = "model"  # name of the pyfunc model inside a run

# Runtime packages a registered model needs (pinned to what logged it); listed, not inferred.
_RUNTIME_PACKAGES = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "pyyaml")


def _pip_requirements() -> list[str]:
    reqs = []
    for pkg in _RUNTIME_PACKAGES:
        try:
            reqs.append(f"{pkg}=={package_version(pkg)}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


class _DropPickleWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # our class pickles by reference: nothing to warn about
        return "serialized using CloudPickle" not in record.getMessage()


def register_checkpoint(
    run_id: str | None,
    checkpoint_path: str | os.PathLike[str],
    name: str = MODEL_NAME,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> int:
    """Log the checkpoint directory as a pyfunc model of run ``run_id`` (default: the active
    run) and register it as a new version of ``name``; returns the version number.

    The snapper package source goes with it (``code_paths``) and requirements are pinned from
    the installed versions, so the registry entry is self-contained and nothing is inferred
    (requirement inference imports the model and can take minutes).
    """
    ckpt = check_checkpoint(checkpoint_path)
    rid = active_run_id(run_id)
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
            signature=signature(),
            registered_model_name=name,
        )
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in {"checkpoint": str(ckpt.resolve()), **(tags or {})}.items():
        client.set_model_version_tag(name, str(version), key, str(value))
    if description:
        client.update_model_version(name, str(version), description=description)
    log.info("registered %s version %d from %s (run %s)", name, version, ckpt, rid)
    return version


# ------------------------------------------------------------------------------ resolution

def latest_version(name: str) -> int:
    """Highest registered version of ``name`` (LookupError when there is none)."""
    client = mlflow_client()
    escaped = name.replace("'", "\\'")
    versions = [int(v.version) for v in client.search_model_versions(f"name='{escaped}'")]
    if not versions:
        raise NotRegisteredError(f"no registered model named {name!r} in {tracking_uri()}")
    return max(versions)


def pin_model_ref(ref: str) -> str:
    """A models:/ or runs:/ URI with 'latest', bare names and aliases pinned to a version."""
    if ref.startswith("runs:/"):
        return ref
    if ref.startswith("models:/"):
        body = ref[len("models:/"):].strip("/")
        if "@" in body:
            name, alias = body.split("@", 1)
            mv = alias_version(name, alias)
            if mv is None:
                raise NotRegisteredError(missing_alias_message(ref, name, alias))
            return f"models:/{name}/{mv.version}"
        parts = body.rsplit("/", 1)
        if len(parts) == 1:  # models:/<logged model id> (MLflow 3) or models:/<name>
            if parts[0].startswith("m-"):
                return ref
            return f"models:/{parts[0]}/{latest_version(parts[0])}"
        name, version = parts
        if version.lower() == "latest":
            return f"models:/{name}/{latest_version(name)}"
        if not version.isdigit():
            raise BadModelError(f"{ref}: version must be a number, 'latest' or '@alias' (stages are not used)")
        return f"models:/{name}/{int(version)}"
    return f"models:/{ref}/{latest_version(ref)}"


def missing_alias_message(ref: str, name: str, alias: str) -> str:
    """One line: what is missing and how to make it (the production champion has its own)."""
    if name == MODEL_NAME and alias == CHAMPION_ALIAS:
        return (f"{ref} does not exist yet in {tracking_uri()}: train a model on real photos (README 'Running on "
                f"real COCO'), or try the synthetic demo model with --model models:/{DEMO_MODEL_NAME}@{CHAMPION_ALIAS} "
                "(`make demo` makes it)")
    return (f"{ref}: no version of {name!r} has the alias {alias!r} in {tracking_uri()} (a trained model takes "
            f"'{CHAMPION_ALIAS}' when it beats the current one; or `snapper promote {name} VERSION`, README "
            "'Model lifecycle')")


def _local_dir(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if "://" not in uri and ":" not in uri.split("/", 1)[0]:
        return Path(uri)
    return None


def resolve_registered(ref: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint folder of a registry reference (see :mod:`snapper.models.reference`)."""
    return find_checkpoint(model_dir(ref, cache_dir))


def model_dir(ref: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local folder of a registry reference's MLflow model (``MLmodel`` + artifacts).

    Models in a local artifact store are used in place; remote ones are downloaded once into
    ``cache_dir`` (default ``<project>/mlflow/cache``), keyed by the pinned version, so
    "latest" always means the newest at call time.
    """
    uri = pin_model_ref(ref)
    if uri.startswith("models:/"):
        from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

        local = _local_dir(ModelsArtifactRepository.get_underlying_uri(uri))
        if local is not None and local.is_dir():
            return local
    cache = Path(cache_dir) if cache_dir else project_root() / "mlflow" / "cache"
    target = cache / safe_dirname(uri.replace(":/", "_").replace("/", "_"))
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
    return target


def version_of_run(name: str, run_id: str) -> int | None:
    """The version of registered model ``name`` made from ``run_id`` (the highest if several),
    None when that run was never registered: a re-run registers nothing new."""
    escaped = name.replace("'", "\\'")
    try:
        found = mlflow_client().search_model_versions(f"name='{escaped}' and run_id='{run_id}'")
    except mlflow.exceptions.MlflowException:
        return None
    versions = [int(v.version) for v in found]
    return max(versions) if versions else None


# -------------------------------------------------------------------------------- champion


def alias_version(name: str, alias: str = CHAMPION_ALIAS) -> "mlflow.entities.model_registry.ModelVersion | None":
    """The version of ``name`` holding ``alias``; None when no version (or no model) has it."""
    try:
        return mlflow_client().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def model_name_for(preset: str | None, requested: str) -> str:
    """Where a run of ``preset`` registers: smoke and demo presets never under the production
    name (the demo's synthetic model must not become what ``snapper snap`` uses on photos)."""
    if requested == MODEL_NAME and preset in SMOKE_PRESETS:
        return CI_MODEL_NAME
    if requested == MODEL_NAME and preset in DEMO_PRESETS:
        return DEMO_MODEL_NAME
    return requested


@dataclass(frozen=True)
class ChampionCheck:
    """The comparison that decides whether ``version`` takes the champion alias.

    ``rival`` is the champion being challenged, or the rough boxes themselves (``identity``)
    when there is no champion yet: a model that makes boxes worse never becomes champion.
    Scores are the validation score (higher is better) on the same boxes, ``eval_set``.
    """

    name: str
    version: int
    score: float
    rival: str
    rival_score: float | None
    eval_set: str
    promoted: bool  # the alias moved to this version now
    reason: str
    holds: bool = False  # this version is the champion after the check (promoted, or already was)

    def line(self) -> str:
        verdict = "became champion" if self.promoted else "stays champion" if self.holds else "not promoted"
        return f"{self.name} version {self.version} {verdict}: {self.reason}"


def decide_champion(name: str, version: int, score: float, eval_set: str, champion: int | None,
                    champion_score: float | None, identity_score: float) -> ChampionCheck:
    """Promote only on a strictly better score than the champion's (or, without a champion, than
    the rough boxes'), both measured on the same evaluation boxes."""
    if champion == version:
        return ChampionCheck(name, version, score, f"version {champion}", champion_score, eval_set, False,
                             "it already is the champion", holds=True)
    if champion is not None and champion_score is None:
        return ChampionCheck(name, version, score, f"version {champion}", None, eval_set, False,
                             f"version {champion} (champion) could not be scored on {eval_set}; promote by hand")
    rival, rival_score = (f"version {champion}", champion_score) if champion is not None else ("identity", identity_score)
    assert rival_score is not None
    better = score > rival_score
    what = f"champion version {champion}" if champion is not None else "the rough boxes"
    reason = f"score {score:.2f} vs {rival_score:.2f} for {what} on {eval_set}"
    if champion is None:
        reason += "; there is no champion yet"
    return ChampionCheck(name, version, score, rival, rival_score, eval_set, better, reason, holds=better)


def record_champion_check(check: ChampionCheck) -> None:
    """Log the comparison as tags of the version and move the alias when it won."""
    client = mlflow_client()
    tags = {"champion.check": "promoted" if check.promoted else "holds" if check.holds else "kept",
            "champion.rival": check.rival, "champion.score": f"{check.score:.4g}",
            "champion.rival_score": "" if check.rival_score is None else f"{check.rival_score:.4g}",
            "champion.reason": check.reason}  # the boxes it was scored on: in the reason
    for key, value in tags.items():
        client.set_model_version_tag(check.name, str(check.version), key, value)
    if check.promoted:
        client.set_registered_model_alias(check.name, CHAMPION_ALIAS, str(check.version))
        log.info("%s", check.line())


def describe_version(name: str, version: int, text: str) -> None:
    """The version's description (markdown, shown on its page in MLflow)."""
    mlflow_client().update_model_version(name, str(version), description=text)
