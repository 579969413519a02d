"""``snapper promote``'s gate: a registered version takes ``@champion`` only when it beats the
current champion on the same boxes, by the rule that decides after training
(:func:`snapper.mlops.registry.decide_champion`), unless a person forces it with a reason.

Both are evaluated in one :func:`snapper.training.publish.evaluate_models` call (identity,
candidate and champion on the same held-out boxes, as the train flow does): by default the
held-out shards recorded with the candidate (its ``lineage.json``,
:func:`snapper.lineage.read_lineage`), else the ``shards`` given. Every move is recorded on both
versions (:func:`snapper.mlops.promote.record_move`); a refusal moves nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from snapper.config import EvalConfig, SnapSettings
from snapper.errors import BadOptionError
from snapper.evaluation.evaluate import IDENTITY
from snapper.home import resolve
from snapper.lineage import read_lineage
from snapper.mlops.lifecycle import CHAMPION_METHOD, eval_set_name
from snapper.mlops.promote import champion_version, get_version, record_move
from snapper.mlops.registry import ChampionCheck, decide_champion, resolve_registered
from snapper.training.publish import evaluate_models

log = logging.getLogger(__name__)

CANDIDATE = "snapper"  # the candidate's method name in the evaluation (as after training)


def held_out_shards(checkpoint: str | os.PathLike[str], shards: Sequence[str] | None) -> tuple[list[str], str]:
    """The shards to compare on and the dataset's name: ``shards`` when given, else the
    candidate's recorded held-out shards."""
    lineage = read_lineage(checkpoint) or {}
    if shards:
        return list(shards), str(lineage.get("dataset") or "given shards")
    recorded = (lineage.get("val") or {}).get("shards") or []
    if not recorded:
        raise BadOptionError(f"{checkpoint}: no held-out shards are recorded with this version; "
                             "pass --shards (the validation shards both models should be scored on)")
    return list(recorded), str(lineage.get("dataset") or "-")


def gate(name: str, version: int, champion: int | None, shards: Sequence[str] | None, device: str,
         out_dir: str | os.PathLike[str] | None) -> ChampionCheck:
    """Evaluate candidate and champion on the same boxes and decide (nothing recorded yet)."""
    candidate = resolve_registered(f"models:/{name}/{version}")
    checkpoints = {CANDIDATE: str(candidate)}
    if champion is not None:
        checkpoints[CHAMPION_METHOD] = str(resolve_registered(f"models:/{name}/{champion}"))
    urls, dataset = held_out_shards(candidate, shards)
    out = resolve(out_dir or os.path.join("runs", "promote", f"{name}-v{version}"))
    ev = evaluate_models(checkpoints, EvalConfig(shards=urls, snap=SnapSettings(device=device)), out, None)
    scores = ev["scores"]
    return decide_champion(name, version, float(scores[CANDIDATE] or 0.0), eval_set_name(ev, {"data": dataset}),
                           champion, scores.get(CHAMPION_METHOD), float(scores[IDENTITY] or 0.0))


def promote(name: str, version: int, shards: Sequence[str] | None = None, force: bool = False,
            reason: str | None = None, device: str = "auto",
            out_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Move ``@champion`` of ``name`` to ``version`` if it wins the gate (or ``force`` with a
    ``reason``). Returns ``moved`` (bool), ``line`` (what happened, one line), ``check``."""
    if force and not (reason or "").strip():
        raise BadOptionError("--force needs --reason TEXT: say why the gate is skipped (it is recorded)")
    get_version(name, version)  # a missing version: one line before anything is loaded
    champion = champion_version(name)
    if champion == version:
        return {"moved": False, "line": f"{name} version {version} already is the champion", "check": None}
    if force:
        line = record_move(name, version, champion, "not evaluated (forced)", str(reason), forced=True)
        return {"moved": True, "line": line, "check": None}
    check = gate(name, version, champion, shards, device, out_dir)
    if not check.promoted:
        return {"moved": False, "line": check.line() + " (nothing moved; --force --reason TEXT overrides)",
                "check": check}
    line = record_move(name, version, champion, check.reason, reason or "better on the same boxes")
    return {"moved": True, "line": line, "check": check}
