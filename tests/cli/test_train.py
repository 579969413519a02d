"""``snapper train``: config layers, typed --set checked before anything is written, exit codes."""

from __future__ import annotations

import json

import pytest
import yaml

from snapper import cli
from snapper.config import TrainConfig
from snapper.models.checkpoint import load_checkpoint
from snapper.overrides import load_yaml
from snapper.training.log import HISTORY_FILE, read_history
from snapper.training.schedule import lr_at
from tests.helpers import make_tiny_shards



@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("data"))


def tiny_args(shards, out, *more: str) -> list[str]:
    return ["train", "--preset", "cpu-tiny", "--set", "model.input_size=32",
            "--set", f"data.train_shards={json.dumps(shards['train'])}",
            "--set", f"data.val_shards={json.dumps(shards['val'])}", "--set", "tracking.enabled=false",
            "--set", "device=cpu", *more, "--out-dir", str(out)]


def test_regression_head_trains_from_the_cli(shards, tmp_path, capsys):
    out = tmp_path / "reg"
    rc = cli.main(tiny_args(shards, out, "--set", "model.head=regression", "--set", "steps=3",
                            "--set", "eval_every=3"))
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 3
    model, mcfg, _ = load_checkpoint(result["best_checkpoint"])
    assert mcfg.head == "regression" and type(model).__name__ == "RegressionNet"


def test_set_lr_is_a_float_and_trains_with_it(shards, tmp_path, capsys):
    out = tmp_path / "lr"
    rc = cli.main(tiny_args(shards, out, "--set", "lr=1e-3", "--set", "steps=2", "--set", "log_every=1",
                            "--set", "data.val_shards=[]"))
    assert rc == 0, capsys.readouterr().err
    cfg = load_yaml(TrainConfig, out / "config.yaml")
    assert cfg.lr == 0.001 and type(cfg.lr) is float
    rows = read_history(out / HISTORY_FILE)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:  # the optimizer ran at the schedule of lr = 0.001
        assert r["lr"] == pytest.approx(lr_at(cfg, r["step"] - 1), rel=1e-12)
    assert rows[0]["lr"] == pytest.approx(0.001 / cfg.warmup_steps, rel=1e-12)


def test_bad_set_value_exits_2_naming_the_key_before_writing(tmp_path, capsys):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--preset", "cpu-tiny", "--set", "steps=abc", "--out-dir", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "steps" in err and "int" in err and "'abc'" in err
    assert not out.exists()
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--set", "model.nope=1", "--out-dir", str(out)])
    assert e.value.code == 2 and "nope" in capsys.readouterr().err
    assert not out.exists()


def exit_code(argv: list[str]) -> int:
    """The command's exit status, whether it returns it or exits (argparse refuses a bad --set)."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code)


def test_cli_refuses_a_config_without_data(tmp_path, capsys):
    assert cli.main(["train", "--preset", "cpu-tiny", "--out-dir", str(tmp_path / "x")]) == 2
    assert "train_shards is empty" in capsys.readouterr().err
    assert exit_code(["train", "--preset", "cpu-tiny", "--set", "steps=0", "--out-dir", str(tmp_path / "x")]) == 2
    assert "steps must be positive" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_config_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    assert cli.main(["train", "--config", str(bad), "--out-dir", str(tmp_path / "x")]) == 2
    assert "stepz" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_print_config_shows_the_layers(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"batch_size": 5}))
    assert cli.main(["train", "--preset", "cpu", "--config", str(f), "--set", "lr=5e-4", "--print-config",
                     "--out-dir", str(tmp_path / "o")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["batch_size"] == 5 and printed["lr"] == 0.0005 and printed["out_dir"] == str(tmp_path / "o")
    assert printed["model"]["trunk"] == "efficientnet_lite0"  # from the preset
    assert not (tmp_path / "o").exists()
