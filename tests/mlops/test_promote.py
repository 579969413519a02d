"""The model lifecycle as a user meets it on the command line: the missing champion in one
line, the synthetic-data warning, ``snapper promote`` (gated, forced moves recorded on both
versions) and ``snapper models``."""

from __future__ import annotations

import json

import pytest

from snapper.cli import main as cli
from snapper.lineage import SIDECAR, read_lineage, shard_lineage, synthetic_warning
from tests.batchdata import tiny_checkpoint
from tests.helpers import make_tiny_shards

def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.strip().splitlines() if line]


def test_snapping_without_a_champion_says_how_to_make_one(store, photo, capsys) -> None:
    assert cli(["snap", str(photo), "--box", "18,12,55,26"]) == 2  # default: models:/snapper@champion
    err = _err_lines(capsys)
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "models:/snapper@champion does not exist" in err[0] and "Running on real COCO" in err[0]
    assert "models:/snapper-demo@champion" in err[0] and "make demo" in err[0]


def test_a_synthetic_model_warns_in_one_line(tmp_path, photo, capsys) -> None:
    shards = make_tiny_shards(tmp_path / "data")
    ckpt = tiny_checkpoint(tmp_path / "synthetic-n8-s0-model")
    assert synthetic_warning(ckpt) is None  # nothing recorded: nothing claimed
    lineage = shard_lineage(shards["train"], shards["val"], "synthetic-n8-s0")
    assert lineage["kind"] == "synthetic" and lineage["train"]["manifests"][0]["sha256"]
    (ckpt / SIDECAR).write_text(json.dumps(lineage))
    assert read_lineage(ckpt)["val"]["shards"] == shards["val"]
    assert cli(["snap", str(photo), "--box", "18,12,55,26", "--model", str(ckpt)]) == 0
    err = _err_lines(capsys)
    assert len(err) == 1 and "trained only on synthetic shapes" in err[0] and "Running on real COCO" in err[0]
    (ckpt / SIDECAR).write_text(json.dumps(shard_lineage(shards["train"], shards["val"], "coco")))
    assert cli(["snap", str(photo), "--box", "18,12,55,26", "--model", str(ckpt)]) == 0
    assert not _err_lines(capsys)


@pytest.fixture(scope="module")
def versions(store, tmp_path_factory) -> dict:
    """Two versions of ``unit-promote`` with the same weights (a tie: the gate must refuse),
    their held-out shards recorded with them; version 1 is the champion."""
    tracking, registry = store["tracking"], store["registry"]
    root = tmp_path_factory.mktemp("promote")
    shards = make_tiny_shards(root / "data")
    ckpt = tiny_checkpoint(root / "ck")
    (ckpt / SIDECAR).write_text(json.dumps(shard_lineage(shards["train"], shards["val"], "tiny-real")))
    with tracking.start_run("unit-promote", run_name="r") as run:
        v1 = registry.register_checkpoint(run.info.run_id, ckpt, "unit-promote", tags={"data.name": "tiny-real"},
                                          description="first")
        v2 = registry.register_checkpoint(run.info.run_id, ckpt, "unit-promote")
    tracking.mlflow_client().set_registered_model_alias("unit-promote", "champion", str(v1))
    return {"v1": v1, "v2": v2, "root": root}


def test_promote_refuses_a_model_that_is_not_better(store, versions, capsys) -> None:
    registry = store["registry"]
    out = versions["root"] / "cmp"
    assert cli(["promote", "unit-promote", str(versions["v2"]), "--device", "cpu", "--out-dir", str(out)]) == 1
    said = capsys.readouterr().out
    assert "not promoted" in said and "nothing moved" in said and "--force" in said
    assert int(registry.alias_version("unit-promote").version) == versions["v1"]
    assert (out / "per_box.parquet").is_file() or any(out.glob("*.parquet"))  # both scored on the same boxes


def test_forced_promotion_needs_a_reason_and_is_recorded_on_both_versions(store, versions, capsys) -> None:
    tracking, registry = store["tracking"], store["registry"]
    v1, v2 = versions["v1"], versions["v2"]
    assert cli(["promote", "unit-promote", str(v2), "--force"]) == 2
    assert "--reason" in _err_lines(capsys)[0]
    assert cli(["promote", "unit-promote", "99"]) == 2
    assert "not registered" in _err_lines(capsys)[0]
    assert cli(["promote", "unit-promote", str(v2), "--force", "--reason", "roll forward for a test"]) == 0
    assert "moved from version 1 to version 2" in capsys.readouterr().out
    assert int(registry.alias_version("unit-promote").version) == v2
    client = tracking.mlflow_client()
    new, old = (client.get_model_version("unit-promote", str(v)) for v in (v2, v1))
    assert new.tags["champion.check"] == "forced" and old.tags["champion.check"] == "replaced"
    for mv in (new, old):
        assert mv.tags["champion.move_reason"] == "roll forward for a test" and mv.tags["champion.moved"] == "from 1 to 2"
        assert "forced by hand" in mv.description and "roll forward for a test" in mv.description
        assert mv.description.splitlines()[-1].startswith("- 20") and mv.description.splitlines()[-1].count("Z:") == 1
    assert old.description.startswith("first")  # the line is appended, nothing replaced
    assert cli(["promote", "unit-promote", str(v2)]) == 0
    assert "already is the champion" in capsys.readouterr().out


def test_models_lists_versions_with_aliases_and_data(store, versions, capsys) -> None:
    store["tracking"].mlflow_client().set_registered_model_alias("unit-promote", "champion", str(versions["v2"]))
    assert cli(["models", "unit-promote"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["name", "version", "aliases", "score"]
    rows = {int(line.split()[1]): line for line in lines[1:]}
    assert set(rows) == {versions["v1"], versions["v2"]}
    assert "@champion" in rows[versions["v2"]] and "@champion" not in rows[versions["v1"]]
    assert "tiny-real" in rows[versions["v1"]]
    assert cli(["models", "no-such-model"]) == 2
    assert "no-such-model" in _err_lines(capsys)[0]
