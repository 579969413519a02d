"""The Prefect wiring, run for real against a temporary Prefect server (prefect_test_harness).

Tiny data (a dozen synthetic images) and the ``cpu-tiny`` preset with a handful of steps: the
point is that the flows call the library correctly, pass results along, skip finished work
and publish their artifacts, not accuracy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("prefect")

from flows import runners  # noqa: E402
from flows.common import flatten, override  # noqa: E402
from flows.shard import _is_transient, shard_coco  # noqa: E402
from snapper.config import TrainConfig  # noqa: E402
from snapper.data.manifest import ShardError  # noqa: E402
from snapper.models.reference import resolve_model  # noqa: E402


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory):
    """SNAPPER_HOME (data, shards, runs, MLflow store) in a temp dir for the whole session."""
    h = tmp_path_factory.mktemp("snapper-home")
    saved = {k: os.environ.get(k) for k in ("SNAPPER_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["SNAPPER_HOME"] = str(h)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the local SQLite store under the temp home
    yield h
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def harness(home: Path, prefect_server):
    """The session's Prefect server, with this module's SNAPPER_HOME."""
    yield


@pytest.fixture(scope="session")
def synth(home: Path) -> Path:
    from snapper.data.synthetic import generate

    return generate(home / "data" / "tiny", num_images=12, seed=3)


# ---------------------------------------------------------------------------- plain helpers


def test_task_runner_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    for var in (runners.DASK_ENV, runners.RAY_ENV, runners.WORKERS_ENV):
        monkeypatch.delenv(var, raising=False)
    r = runners.task_runner_from_env()
    assert isinstance(r, ThreadPoolTaskRunner)
    monkeypatch.setenv(runners.WORKERS_ENV, "3")
    assert runners.task_runner_from_env()._max_workers == 3
    monkeypatch.setenv(runners.DASK_ENV, "tcp://10.1.2.3:8786")
    d = runners.task_runner_from_env()
    assert isinstance(d, DaskTaskRunner) and d.address == "tcp://10.1.2.3:8786"
    assert "10.1.2.3" in runners.describe(d)
    f = runners.with_task_runner(shard_coco, dask_address="tcp://10.9.9.9:8786")
    assert f.name == "shard-coco" and f.task_runner.address == "tcp://10.9.9.9:8786"
    monkeypatch.delenv(runners.DASK_ENV)
    monkeypatch.setenv(runners.RAY_ENV, "ray://head:10001")
    try:
        import prefect_ray  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="prefect-ray"):
            runners.task_runner_from_env()


def test_overrides_are_validated_by_the_config() -> None:
    assert flatten({"model": {"trunk": "resnet18"}, "steps": 5}) == {"model.trunk": "resnet18", "steps": 5}
    cfg = override(TrainConfig(), {"model": {"head": "regression"}, "data.train_shards": ["a.tar", "b.tar"], "lr": 0.5})
    assert cfg.model.head == "regression" and cfg.data.train_shards == ["a.tar", "b.tar"] and cfg.lr == 0.5
    assert override(TrainConfig(), None) == TrainConfig()
    with pytest.raises(ValueError, match="stepz"):
        override(TrainConfig(), {"stepz": 3})


def test_only_transient_io_errors_are_retried() -> None:
    assert _is_transient(OSError(5, "I/O error"))
    assert _is_transient(TimeoutError())
    wrapped = ShardError("train-000001.tar: cannot read x.jpg")
    wrapped.__cause__ = OSError(5, "I/O error")
    assert _is_transient(wrapped)
    assert not _is_transient(FileNotFoundError("gone"))  # retrying cannot bring a file back
    assert not _is_transient(ShardError("x.jpg is not an image"))
    assert not _is_transient(ValueError("bad json"))


# ---------------------------------------------------------------------------- shard-coco


def test_shard_flow_writes_manifests_and_rerun_skips(harness: None, home: Path, synth: Path) -> None:
    from snapper.data.coco import load_coco
    from snapper.data.shards import shard_index, split_by_image

    out = home / "shards" / "tiny"
    kw = dict(ann_file=str(synth), images_dir=str(synth.parent / "images"), out_dir=str(out), dataset="tiny",
              val_fraction=0.25, seed=1, shard_size=4)
    first = shard_coco(**kw)
    assert set(first) == {"train", "val"}
    index = load_coco(synth, synth.parent / "images")
    assert first["train"]["counts"]["images"] + first["val"]["counts"]["images"] == len(index.images)
    assert first["train"]["written"] == first["train"]["counts"]["shards"] >= 2  # 9 images / 4 per shard
    for split, r in first.items():
        assert Path(r["manifest"]).is_file()
        assert sorted(p.name for p in out.glob(f"{split}-*.tar")) == [s["file"] for s in json.loads(Path(r["manifest"]).read_text())["shards"]]

    # The flow's manifests are exactly what the library's own driver (the CLI path) writes.
    train_ids, val_ids = split_by_image(index, 0.25, 1)
    ref = home / "shards" / "tiny-ref"
    for split, ids in (("train", train_ids), ("val", val_ids)):
        shard_index(index, ref, split, 4, 1, ids, {"val_fraction": 0.25, "seed": 1})
        assert (ref / f"{split}-manifest.json").read_bytes() == Path(first[split]["manifest"]).read_bytes()

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    second = shard_coco(**kw)
    for split in ("train", "val"):
        assert second[split]["written"] == 0
        assert second[split]["reused"] == first[split]["counts"]["shards"]
        assert second[split]["counts"] == first[split]["counts"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == mtimes


# ---------------------------------------------------------------------------- train / evaluate


TINY = {"steps": 4, "eval_every": 2, "ckpt_every": 2, "log_every": 2, "batch_size": 4}


@pytest.fixture(scope="session")
def trained(harness: None, home: Path) -> dict:
    from flows.train import train_snapper

    return train_snapper(name="tiny", preset="cpu-tiny", overrides=TINY, num_images=14, val_fraction=0.25,
                         shard_size=6, seed=2)


def test_train_flow_trains_evaluates_registers_and_reports(trained: dict, home: Path) -> None:
    import mlflow
    from prefect.artifacts import Artifact

    from flows.common import artifact_key
    from flows.lifecycle import keys
    from flows.train import PROGRESS_KEY
    from snapper.mlops import registry, tracking

    assert trained["train"]["steps"] == TINY["steps"]
    assert Path(trained["train"]["best_checkpoint"], "model.pt").is_file()
    assert Path(trained["regression"]["best_checkpoint"], "model.pt").is_file()
    assert Path(trained["train"]["out_dir"]).parent == home / "runs"  # relative paths land in SNAPPER_HOME
    # on CPU the model and its baseline trained side by side, a process each
    for run in (trained["train"], trained["regression"]):
        assert Path(run["out_dir"], "flow-train-config.yaml").is_file()

    df = pd.read_parquet(trained["eval"]["parquet"])
    assert set(df["method"]) == {"snapper", "regression", "identity"}
    counts = df.groupby("method")["annotation_id"].nunique()
    assert counts.nunique() == 1 and counts.iloc[0] > 0  # every method scored on the same boxes

    tracking.configure()
    client = mlflow.MlflowClient()
    run = client.get_run(trained["mlflow_run_id"])
    metrics = set(run.data.metrics)
    # curves, and the headline columns: rounded, named in Table 1's order (issue 24)
    assert {"train/loss", "table1/1_miou", "table1/2_iou_gt_0.9", "table1/7_score"} <= metrics
    assert all(v == round(v, 2) for k, v in run.data.metrics.items() if k.startswith("table1/"))
    assert client.get_experiment(run.info.experiment_id).name == "snapper-ci"  # smoke runs apart
    baseline = client.get_run(trained["regression"]["mlflow_run_id"])
    assert baseline.data.tags["mlflow.parentRunId"] == run.info.run_id  # one row per training
    assert any(k.startswith("val/eval/snapper/all/") for k in metrics)
    assert not any(k.startswith(("eval/", "best/", "last/")) for k in metrics)  # grouped after the curves
    assert "eval" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "train-snapper `tiny`" in run.data.tags["mlflow.note.content"]
    assert run.data.tags["prefect.flow_run_id"]

    # A smoke preset registers under snapper-ci, never under the production name.
    reg = trained["registered"]
    assert reg["name"] == "snapper-ci" and not client.search_registered_models("name='snapper'")
    mv = client.get_model_version("snapper-ci", str(reg["version"]))
    assert mv.run_id == run.info.run_id and mv.tags["preset"] == "cpu-tiny"
    assert mv.tags["champion.rival"] == "identity" and mv.tags["champion.check"] in {"promoted", "kept"}
    assert (registry.alias_version("snapper-ci") is not None) == reg["champion"]
    assert "Table 1 on the held-out split: boxes" in mv.description and run.info.run_id in mv.description
    assert f"(#/experiments/{run.info.experiment_id}/runs/{run.info.run_id})" in mv.description  # a working link
    assert mv.tags["data.kind"] == "synthetic" and mv.tags["data.name"] == "synthetic-n14-s2"
    assert len(mv.tags["data.train_sha256"]) == 64 and len(mv.tags["data.val_sha256"]) == 64
    assert len(mv.tags) <= 14  # what a person reads; the rest is the run's registration JSON
    assert resolve_model(f"models:/snapper-ci/{reg['version']}").joinpath("model.pt").is_file()

    # progress from the runs' progress.json (the two trainings ran in processes of their own)
    for run_name in ("tiny", "tiny-regression"):
        progress = Artifact.get(artifact_key(PROGRESS_KEY, run_name))
        assert progress is not None and progress.type == "progress" and float(progress.data) == 100.0

    k = keys("tiny")
    md = Artifact.get(k["table"])
    assert md is not None and md.type == "markdown" and md.description
    assert trained["mlflow_run_id"] in md.data and "| identity |" in md.data and "snapper-ci" in md.data
    rows = json.loads(Artifact.get(k["rows"]).data)
    assert {"method", "size", "boxes", "mIoU", "IoU>0.9"} <= set(rows[0])
    assert {"all", "small"} <= {r["size"] for r in rows} or {"all", "medium"} <= {r["size"] for r in rows}
    assert all(v == round(v, 1) for r in rows for v in r.values() if isinstance(v, float))


def test_train_flow_rerun_reuses_training_and_registration(trained: dict) -> None:
    from flows.train import train_snapper

    again = train_snapper(name="tiny", preset="cpu-tiny", overrides=TINY, num_images=14, val_fraction=0.25,
                          shard_size=6, seed=2, regression_baseline=False)
    assert again["mlflow_run_id"] == trained["mlflow_run_id"]  # finished run returned, not retrained
    assert again["registered"]["version"] == trained["registered"]["version"]  # same run -> same version

    # Resuming a finished run for other settings would train nothing: the flow run fails, before
    # any training, with one line naming what differs (issue 24), never "Completed".
    state = train_snapper(name="tiny", preset="cpu-tiny", overrides={**TINY, "steps": 6}, num_images=14,
                          val_fraction=0.25, shard_size=6, seed=2, regression_baseline=False, return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "steps=6 (the run has 4)" in message and "fresh run" in message and "\n" not in message


def test_a_run_without_a_name_trains_afresh(trained: dict, home: Path) -> None:
    """What `prefect deployment run 'train-snapper/demo' --param overrides='{"steps": 10}'` does
    after an earlier run: a new run folder named after the flow run, trained to the new steps,
    never the earlier run reused (issue 24). A taken name gets the flow run id's start."""
    from prefect import flow

    from flows.train import fresh_run_name, train_snapper

    res = train_snapper(preset="cpu-tiny", overrides={**TINY, "steps": 2}, num_images=14, val_fraction=0.25,
                        shard_size=6, seed=2, regression_baseline=False, register_model=False)
    assert res["name"].startswith("cpu-tiny-") and res["name"] != trained["name"]
    assert res["train"]["steps"] == 2 and res["mlflow_run_id"] != trained["mlflow_run_id"]
    assert Path(res["train"]["out_dir"]) == home / "runs" / res["name"]

    @flow(flow_run_name="same-name")
    def pick() -> str:
        return fresh_run_name(home / "runs", "cpu-tiny")

    assert pick() == "cpu-tiny-same-name"
    (home / "runs" / "cpu-tiny-same-name").mkdir()
    taken = pick()
    assert taken.startswith("cpu-tiny-same-name-") and len(taken) == len("cpu-tiny-same-name-") + 8


def test_a_new_model_challenges_the_champion_on_the_same_boxes(trained: dict, home: Path) -> None:
    """With a champion in place, the flow evaluates it next to the new model and moves the
    alias only if the new one scores higher; the comparison is on the version. The ``demo``
    preset (what `make demo` and train-snapper/demo run) registers under ``snapper-demo``, with
    its own champion, never under the production name (issue 24)."""
    from flows.train import train_snapper
    from snapper.mlops import registry, tracking

    with tracking.start_run("unit-flows", run_name="old champion") as run:
        old = registry.register_checkpoint(run.info.run_id, trained["regression"]["best_checkpoint"], "snapper-demo")
    tracking.mlflow_client().set_registered_model_alias("snapper-demo", "champion", str(old))
    res = train_snapper(name="tiny-demo", preset="demo", num_images=14, val_fraction=0.25, shard_size=6, seed=2,
                        overrides={**TINY, "model.input_size": 48, "data.workers": 0}, regression_baseline=False)
    assert res["registered"]["name"] == "snapper-demo"
    assert not tracking.mlflow_client().search_registered_models("name='snapper'")
    assert "champion" in set(pd.read_parquet(res["eval"]["parquet"])["method"])  # same boxes, same table
    mv = tracking.mlflow_client().get_model_version("snapper-demo", str(res["registered"]["version"]))
    assert mv.tags["champion.rival"] == f"version {old}" and mv.tags["preset"] == "demo"
    won = float(mv.tags["champion.score"]) > float(mv.tags["champion.rival_score"])
    assert res["registered"]["champion"] == won
    assert int(registry.alias_version("snapper-demo").version) == (res["registered"]["version"] if won else old)


def test_evaluate_flow_on_registered_model(trained: dict, home: Path) -> None:
    from flows.evaluate import evaluate_snapper

    res = evaluate_snapper(
        model=f"models:/snapper-ci/{trained['registered']['version']}",
        baselines={"regression": trained["regression"]["best_checkpoint"]},
        dataset="synthetic-n14-s2", out_dir="runs/eval-tiny",
    )
    assert Path(res["parquet"]).parent == home / "runs" / "eval-tiny"
    assert set(pd.read_parquet(res["parquet"])["method"]) == {"snapper", "regression", "identity"}
    assert res["mlflow_run_id"] and res["mlflow_run_id"] != trained["mlflow_run_id"]
    # The registered model is the trained best checkpoint: on the same boxes it must predict
    # exactly what the training flow's evaluation recorded.
    cols = ["annotation_id", "pred_x", "pred_y", "pred_w", "pred_h"]
    ours = pd.read_parquet(res["parquet"]).query("method == 'snapper'")[cols].sort_values("annotation_id")
    theirs = pd.read_parquet(trained["eval"]["parquet"]).query("method == 'snapper'")[cols].sort_values("annotation_id")
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), theirs.reset_index(drop=True))


@pytest.mark.slow
def test_torchrun_path_on_cpu(harness: None, home: Path, synth: Path) -> None:
    """gpus > 1 launches torchrun (2 gloo processes on CPU here), streams its log, and returns
    the finished run's result."""
    from prefect import flow

    from flows.train import train_task
    from snapper.data.manifest import shard_urls
    from snapper.data.shards import shard_dataset
    from snapper.overrides import to_dict
    from snapper.training.presets import preset_config
    from snapper.training.progress import read_progress

    shards = home / "shards" / "ddp"  # its own: no dependence on what other tests left behind
    for split in ("train", "val"):
        shard_dataset(synth, synth.parent / "images", shards, split=split, shard_size=4)
    cfg = override(preset_config("cpu-tiny"), {**TINY, "device": "cpu", "tracking.enabled": False,
                                                "tracking.registered_model": None,
                                                "out_dir": str(home / "runs" / "ddp"),
                                                "data.train_shards": shard_urls(shards, "train"),
                                                "data.val_shards": shard_urls(shards, "val")})

    @flow
    def ddp() -> dict:
        return train_task(to_dict(cfg), gpus=2)

    res = ddp()
    assert res["steps"] == TINY["steps"]
    assert Path(res["last_checkpoint"], "model.pt").is_file()
    assert (home / "runs" / "ddp" / "flow-train-config.yaml").is_file()
    progress = read_progress(home / "runs" / "ddp")  # written by torchrun's rank 0, read by the flow
    assert progress is not None and progress.status == "finished" and progress.step == TINY["steps"]


def test_adapt_flow_fine_tunes_a_registered_model_and_publishes(trained: dict, home: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.adapt import adapt_snapper
    from flows.common import artifact_key

    gold = home / "data" / "synthetic-n14-s2" / "annotations.json"
    d = json.loads(gold.read_text())
    for a in d["annotations"]:  # the annotators draw every box 10% wider
        a["bbox"] = [a["bbox"][0] - 0.05 * a["bbox"][2], a["bbox"][1], 1.1 * a["bbox"][2], a["bbox"][3]]
    (home / "rough-adapt.json").write_text(json.dumps(d))
    base = f"models:/snapper-ci/{trained['registered']['version']}"
    res = adapt_snapper(gold="data/synthetic-n14-s2/annotations.json", images="data/synthetic-n14-s2/images",
                        name="snapper-ci-adapted", rough="rough-adapt.json", base=base, gold_only=False,
                        overrides={"steps": 1, "batch_size": 4, "eval_every": 1, "warmup_steps": 1,
                                   "data": {"workers": 0}})
    assert res["base"] == base and {r["method"] for r in res["rows"]} == {"identity", "base", "adapted"}
    assert Path(res["eval_dir"]).parent == home / "runs" / "adapt" / "snapper-ci-adapted"
    assert res["noise"]["outward"]["left"]["mean"] > 0.03 and res["registered"]["name"] == "snapper-ci-adapted"
    md = Artifact.get(artifact_key("snapper-adapt", "snapper-ci-adapted"))
    assert md is not None and "| adapted |" in md.data and "snapper-ci-adapted version" in md.data
    assert res["replay"] and f"- rehearsal: {len(res['replay'])} shards beside the gold" in md.data  # the base's own
    noise = Artifact.get(artifact_key("snapper-adapt", "snapper-ci-adapted") + "-noise")
    assert noise is not None and "outward mean" in noise.data
