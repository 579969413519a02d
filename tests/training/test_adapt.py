"""`snapper adapt`: bad input is refused in one line before anything is written, a small run goes
end to end through the CLI (split, shards, noise, fine-tune, gold-only, comparison, registry),
and the champion alias moves only when the adapted model beats every rival on the report split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from snapper.cli import main as cli
from snapper.config import AdaptConfig
from snapper.data.coco import load_coco
from snapper.lineage import shard_lineage, write_sidecar
from snapper.training.adapt import AdaptInputError, check_replay, mixed_shards, split_gold
from tests.batchdata import tiny_checkpoint
from tests.helpers import make_tiny_coco, make_tiny_shards

FAST = ["--steps", "2", "--set", "batch_size=4", "--set", "data.workers=0", "--set", "eval_every=2",
        "--set", "warmup_steps=1", "--set", "log_every=1", "--device", "cpu"]


def _biased_rough(gold: Path, out: Path) -> Path:
    """The gold boxes drawn 8% larger and shifted up (an annotator's habit), same ids."""
    d = json.loads(gold.read_text())
    for a in d["annotations"]:
        x, y, w, h = a["bbox"]
        a["bbox"] = [x - 0.04 * w, y - 0.08 * h, 1.08 * w, 1.08 * h]
    out.write_text(json.dumps(d))
    return out


@pytest.fixture(scope="module")
def gold(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapt")
    ann = make_tiny_coco(root, n_images=12)
    return {"ann": ann, "images": ann.parent / "images", "rough": _biased_rough(ann, root / "rough.json"),
            "base": tiny_checkpoint(root / "base"), "root": root}


def _refused(capsys, args: list[str], out: Path, message: str) -> None:
    assert cli(["adapt", *args, "--name", "snapper-unit", "--out-dir", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()  # refused before anything was written


def test_bad_input_is_refused_in_one_line_before_any_work(gold, tmp_path, capsys):
    base = ["--base", str(gold["base"])]
    few = make_tiny_coco(tmp_path / "few", n_images=4)
    _refused(capsys, [str(few), str(few.parent / "images"), *base], tmp_path / "o1", "too few to hold any out")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**json.loads(gold["ann"].read_text()), "annotations": []}))
    _refused(capsys, [str(empty), str(gold["images"]), *base], tmp_path / "o2", "no usable gold boxes")
    _refused(capsys, [str(gold["ann"]), str(tmp_path / "nowhere"), *base], tmp_path / "o3", "does not exist")
    missing = tmp_path / "missing.json"
    d = json.loads(gold["ann"].read_text())
    d["images"][0]["file_name"] = "not-there.jpg"
    missing.write_text(json.dumps(d))
    _refused(capsys, [str(missing), str(gold["images"]), *base], tmp_path / "o4", "images cannot be used")
    other = tmp_path / "other.json"  # rough boxes of other objects: other ids, nowhere near the gold ones
    d = json.loads(gold["ann"].read_text())
    for a in d["annotations"]:
        a["id"] += 1000
        a["bbox"] = [0, 0, 1.5, 1.5]
    other.write_text(json.dumps(d))
    _refused(capsys, [str(gold["ann"]), str(gold["images"]), "--rough", str(other), *base], tmp_path / "o5",
             "no box pairs")
    _refused(capsys, [str(gold["ann"]), str(gold["images"]), "--base", str(tmp_path / "no-model")], tmp_path / "o6",
             "no-model")
    _refused(capsys, [str(gold["ann"]), str(gold["images"]), "--noise", "measured", *base], tmp_path / "o7",
             "needs the annotators' rough boxes")
    assert cli(["adapt", str(gold["ann"]), str(gold["images"]), *base, "--name", "../x", "--out-dir",
                str(tmp_path / "o8")]) == 2
    assert "a registered model name" in capsys.readouterr().err and not (tmp_path / "o8").exists()
    good = [str(gold["ann"]), str(gold["images"])]
    _refused(capsys, [*good, *base, "--replay", "base"], tmp_path / "o9", "does not record the shards it was trained on")
    _refused(capsys, [*good, *base, "--replay", str(tmp_path / "none-*.tar")], tmp_path / "o10", "matches no file")
    moved = _base_trained_on(gold["base"], tmp_path / "moved-base", [str(tmp_path / "gone" / "train-000000.tar")])
    _refused(capsys, [*good, "--base", str(moved), "--replay", "base"], tmp_path / "o11",
             "1 of the 1 shards")


def _base_trained_on(base: Path, copy: Path, shards: list[str]) -> Path:
    """A copy of ``base`` whose lineage says it was trained on ``shards``."""
    shutil.copytree(base, copy)
    write_sidecar(copy, shard_lineage(shards, []))
    return copy


def test_by_default_the_base_s_own_shards_are_replayed_when_they_are_all_here(gold, tmp_path) -> None:
    cfg = AdaptConfig(gold="g", images="i", name="x")  # replay=None
    assert check_replay(cfg, gold["base"]) == []  # the base records no training shards
    here = make_tiny_shards(tmp_path / "here", n_images=4, val_fraction=0.25)["train"]
    assert check_replay(cfg, _base_trained_on(gold["base"], tmp_path / "b1", here)) == here
    partly = _base_trained_on(gold["base"], tmp_path / "b2", [*here, str(tmp_path / "gone-000000.tar")])
    assert check_replay(cfg, partly) == []  # not all here: no rehearsal (logged), never a half mix
    assert check_replay(AdaptConfig(gold="g", images="i", name="x", replay=[]), partly) == []


def test_replay_shards_are_drawn_at_their_share() -> None:
    gold, replay = ["g0"], [f"r{i}" for i in range(20)]
    mixed = mixed_shards(gold, replay, 0.4)
    assert mixed.count("g0") == 30 and mixed[-20:] == replay  # 30 of 50 draws gold: 1 - 0.4
    assert mixed_shards(gold, [], 0.4) == gold and mixed_shards(["a", "b"], ["r"], 0.9) == ["a", "b", "r"]


def test_the_split_is_by_image_seeded_and_holds_out_both_splits(gold):
    index = load_coco(gold["ann"], gold["images"])
    cfg = AdaptConfig(gold=str(gold["ann"]), images=str(gold["images"]), name="x")
    a, b = split_gold(index, cfg), split_gold(index, cfg)
    assert a == b and a["report"] and a["select"] and len(a["train"]) >= 3
    assert sorted(a["train"] + a["select"] + a["report"]) == sorted(r.image_id for r in index.images)
    assert split_gold(index, AdaptConfig(gold="g", images="i", name="x", seed=1)) != a
    with pytest.raises(AdaptInputError, match="too few"):
        split_gold(index, AdaptConfig(gold="g", images="i", name="x", select_fraction=0.4, report_fraction=0.45))


def test_adapt_end_to_end_registers_with_lineage_and_champion_only_if_better(gold, store, capsys):
    out = store["cwd"] / "adapt-run"
    replay = make_tiny_shards(gold["root"] / "replay", n_images=4, val_fraction=0.25)["train"]
    base = _base_trained_on(gold["base"], gold["root"] / "base-with-lineage", replay)
    args = ["adapt", str(gold["ann"]), str(gold["images"]), "--rough", str(gold["rough"]), "--base", str(base),
            "--name", "snapper-unit-domain", "--out-dir", str(out), "--replay", "base", *FAST]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "adapt.json").read_text())
    methods = {r["method"] for r in res["rows"]}
    assert methods == {"identity", "base", "gold-only", "adapted"} and "score on the report split" in printed
    boxes = {r["boxes"] for r in res["rows"] if r["size"] == "all"}
    assert len(boxes) == 1  # every row on the same report boxes
    assert res["jitter"]["mode"] == "empirical" and Path(res["jitter"]["noise_file"]).is_file()
    assert res["noise"]["outward"]["top"]["mean"] > 0.05  # the boxes were drawn 8% taller, shifted up
    trained = {k: t["lineage"]["train"]["shards"] for k, t in res["trainings"].items()}
    assert set(replay) < set(trained["adapted"]) and not set(replay) & set(trained["gold-only"])  # rehearsal: adapted only
    assert set(trained["gold-only"]) < set(trained["adapted"])
    client = store["tracking"].mlflow_client()
    reg = res["registered"]
    mv = client.get_model_version("snapper-unit-domain", str(reg["version"]))
    assert mv.tags["parent"] == str(base)
    better = res["scores"]["adapted"] > res["scores"]["base"]
    assert reg["champion"] == better and mv.tags["champion.check"] == ("promoted" if better else "kept")
    aliases = client.get_registered_model("snapper-unit-domain").aliases
    assert (aliases.get("champion") == str(reg["version"])) == better
    assert cli(args) == 0  # a re-run resumes: the same run, the same version
    assert json.loads((out / "adapt.json").read_text())["registered"]["version"] == reg["version"]


def test_the_champion_moves_only_past_every_rival(store):
    from snapper.mlops.lifecycle import challenge_rivals

    rivals = {"base": "base B", "champion": "snapper-x version 1 (champion)"}
    check = challenge_rivals("snapper-x", 2, {"adapted": 70.0, "base": 60.0, "champion": 75.0}, "adapted", rivals, "s")
    assert not check.promoted and check.rival == rivals["champion"] and check.rival_score == 75.0
    check = challenge_rivals("snapper-x", 2, {"adapted": 70.0, "base": 60.0, "champion": 65.0}, "adapted", rivals, "s")
    assert check.promoted and check.holds and "70.00 vs 65.00" in check.reason
    check = challenge_rivals("snapper-x", 2, {"adapted": 60.0, "base": 60.0}, "adapted", {"base": "b"}, "s")
    assert not check.promoted  # a tie keeps the base
    check = challenge_rivals("snapper-x", 2, {"adapted": 90.0, "base": None}, "adapted", {"base": "b"}, "s")
    assert not check.promoted and "could not be scored" in check.reason
    assert np.isfinite(check.score)
