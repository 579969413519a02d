"""Moving ``@champion`` by hand, on the record, and listing what is registered.

The gate itself (evaluate candidate and champion on the same boxes, then
:func:`snapper.mlops.registry.decide_champion`) is :func:`snapper.training.promote.promote`:
evaluation lives above this layer. Here is what it writes: every alias move is recorded on
both versions, the one that takes the alias and the one that loses it, as tags
(``champion.moved_at``, ``champion.moved``, ``champion.move_reason``) and as a line appended to
each description (UTC time, who, from which version, the scores, the reason), so a version
page says how it became (or stopped being) the champion. ``snapper models`` reads
:func:`list_versions`.
"""

from __future__ import annotations

import getpass
import logging
from datetime import datetime, timezone
from typing import Any

from snapper.mlops.registry import CHAMPION_ALIAS, alias_version
from snapper.mlops.tracking import mlflow, mlflow_client, tracking_uri
from snapper.models.reference import NotRegisteredError

log = logging.getLogger(__name__)

FORCED = "forced"


def get_version(name: str, version: int) -> "mlflow.entities.model_registry.ModelVersion":
    """Version ``version`` of ``name``; :class:`NotRegisteredError` (one line) when there is none."""
    try:
        return mlflow_client().get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException:
        raise NotRegisteredError(f"models:/{name}/{version} is not registered in {tracking_uri()} "
                                 f"(`snapper models {name}` lists its versions)") from None


def champion_version(name: str) -> int | None:
    """The version of ``name`` that holds ``@champion`` now (None: none does)."""
    mv = alias_version(name, CHAMPION_ALIAS)
    return int(mv.version) if mv is not None else None


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "unknown"


def move_line(name: str, version: int, previous: int | None, scores: str, reason: str, forced: bool) -> str:
    """The line appended to both descriptions."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    frm = f"version {previous}" if previous is not None else "no champion"
    how = "forced by hand" if forced else "won the gate"
    return (f"{when}: `@{CHAMPION_ALIAS}` of `{name}` moved from {frm} to version {version} by {_who()} ({how}; "
            f"{scores}; reason: {reason})")


def record_move(name: str, version: int, previous: int | None, scores: str, reason: str,
                forced: bool = False) -> str:
    """Move ``@champion`` of ``name`` to ``version`` and record it on both versions; returns the line."""
    client = mlflow_client()
    line = move_line(name, version, previous, scores, reason, forced)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
    when = line.split(": ", 1)[0]
    moved = f"from {previous if previous is not None else 'none'} to {version}"
    roles = [(version, FORCED if forced else "promoted")] + ([(previous, "replaced")] if previous is not None else [])
    for v, check in roles:
        mv = client.get_model_version(name, str(v))
        for key, value in {"champion.check": check, "champion.moved_at": when, "champion.moved": moved,
                           "champion.move_reason": reason}.items():
            client.set_model_version_tag(name, str(v), key, value)
        text = (mv.description or "").rstrip()
        client.update_model_version(name, str(v), description=(text + "\n\n" if text else "") + f"- {line}")
    log.info("%s", line)
    return line


def list_versions(name: str | None = None) -> list[dict[str, Any]]:
    """Every version of ``name`` (default: of every registered model), newest first per model:
    aliases, score, mIoU, data and when it was registered (a row of ``snapper models``)."""
    client = mlflow_client()
    query = f"name='{name.replace(chr(39), chr(92) + chr(39))}'" if name else ""
    rows = []
    aliases_of: dict[str, dict[str, str]] = {}  # search results carry no aliases: the model has them
    for mv in client.search_model_versions(query):
        tags = mv.tags or {}
        if mv.name not in aliases_of:
            aliases_of[mv.name] = dict(client.get_registered_model(mv.name).aliases or {})
        aliases = sorted(a for a, v in aliases_of[mv.name].items() if str(v) == str(mv.version))
        created = datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, timezone.utc)
        rows.append({"name": mv.name, "version": int(mv.version), "aliases": ",".join(f"@{a}" for a in aliases),
                     "score": tags.get("champion.score", "-"), "miou": tags.get("miou", "-"),
                     "data": tags.get("data.name", tags.get("dataset", "-")), "kind": tags.get("data.kind", "-"),
                     "check": tags.get("champion.check", "-"), "registered": created.strftime("%Y-%m-%d %H:%M")})
    if name and not rows:
        raise NotRegisteredError(f"no registered model named {name!r} in {tracking_uri()}")
    return sorted(rows, key=lambda r: (r["name"], -r["version"]))
