"""``snapper <command>``: the dispatcher and what every command shares."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from snapper.cli import COMMANDS, main
from snapper.cli.common import apply_sets, positive_float, positive_int, run, unit_float
from snapper.config import EvalConfig
from snapper.errors import BadBoxError
from snapper.models.reference import ModelNotFoundError


def test_help_lists_every_command(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main([]) == 2


def test_unknown_command_is_one_line_and_exit_2(capsys) -> None:
    assert main(["snapp"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'snapp'" in err and err.count("\n") == 1


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_parser_and_main(name: str) -> None:
    import importlib

    module = importlib.import_module(COMMANDS[name][0])
    assert isinstance(module.build_parser(), argparse.ArgumentParser)
    assert callable(module.main)


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "snapper.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "batch-snap" in proc.stdout


def test_set_is_checked_before_any_work(capsys) -> None:
    p = argparse.ArgumentParser(prog="snapper x")
    assert apply_sets(p, EvalConfig(), ["snap.batch_size=8"]).snap.batch_size == 8
    with pytest.raises(SystemExit) as e:
        apply_sets(p, EvalConfig(), ["snap.batch_size=lots"])
    assert e.value.code == 2
    assert "batch_size: expected int, got 'lots'" in capsys.readouterr().err


@pytest.mark.parametrize("kind, text", [(positive_int, "0"), (positive_int, "x"), (positive_float, "-1"),
                                        (positive_float, "nan"), (positive_float, "inf"), (unit_float, "nan"),
                                        (unit_float, "1.5")])
def test_option_types_refuse_bad_values(kind, text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        kind(text)


def test_run_turns_user_errors_into_one_line(capsys) -> None:
    def missing() -> int:
        raise ModelNotFoundError("/nowhere/model.pt: no such checkpoint")  # a FileNotFoundError too

    def bug() -> int:
        raise KeyError("a bug, not the user's input")

    assert run("snapper x", missing) == 2
    assert capsys.readouterr().err == "snapper x: /nowhere/model.pt: no such checkpoint\n"
    with pytest.raises(KeyError):
        run("snapper x", bug)


def test_only_user_input_errors_become_one_line(photo, monkeypatch, capsys) -> None:
    """A bug (here a ValueError from deep inside, as numpy or torch raise them) keeps its
    traceback; a UserInputError is one line and exit 2."""
    import snapper.cli.snap as snap_cli

    def shape_bug(*args, **kwargs):
        raise ValueError("shape bug")

    monkeypatch.setattr(snap_cli.Snapper, "from_checkpoint", shape_bug)
    monkeypatch.setattr(snap_cli, "resolve_model", lambda ref: ref)
    argv = ["snap", str(photo), "--box", "18,12,55,26", "--model", "anything"]
    with pytest.raises(ValueError, match="shape bug"):
        main(argv)
    for bug in (KeyError("k"), IndexError("i"), OSError("disk on fire"), RuntimeError("cuda")):
        with pytest.raises(type(bug)):
            run("snapper x", lambda: (_ for _ in ()).throw(bug))

    def refused(*args, **kwargs):
        raise BadBoxError("box 0 [1, 2, 3, 4] is unusable (outside_image) for an image of 90x60")

    monkeypatch.setattr(snap_cli.Snapper, "from_checkpoint", refused)
    capsys.readouterr()
    assert main(argv) == 2
    assert capsys.readouterr().err == "snapper snap: box 0 [1, 2, 3, 4] is unusable (outside_image) for an image of 90x60\n"


@pytest.mark.parametrize("command, argv", [
    ("snap", ["img.jpg", "--box", "1,2,3,4"]),
    ("batch-snap", ["rough.json", "images", "out"]),
    ("serve", []),
    ("label-studio", []),
    ("cvat-tighten", ["--task", "1"]),
])
def test_every_command_takes_the_model_as_model(command: str, argv: list[str]) -> None:
    import importlib

    parser = importlib.import_module(COMMANDS[command][0]).build_parser()
    assert parser.parse_args([*argv, "--model", "runs/x/best"]).model == "runs/x/best"
    assert "--model" in parser.format_help() and "--checkpoint" not in parser.format_help()


@pytest.mark.parametrize("command, argv", [("snap", ["img.jpg", "--box", "1,2,3,4"]),
                                           ("batch-snap", ["rough.json", "images", "out"])])
def test_checkpoint_is_a_hidden_alias_of_model(command: str, argv: list[str]) -> None:
    import importlib

    from snapper.models.reference import DEFAULT_MODEL

    parser = importlib.import_module(COMMANDS[command][0]).build_parser()
    assert parser.parse_args([*argv, "--checkpoint", "runs/old/best"]).model == "runs/old/best"
    assert parser.parse_args(argv).model == DEFAULT_MODEL


def test_evaluate_takes_several_models_and_the_old_option_name() -> None:
    from snapper.cli.evaluate import build_parser

    args = build_parser().parse_args(["--shards", "s", "--model", "a=runs/a", "--checkpoint", "runs/b"])
    assert args.model == ["a=runs/a", "runs/b"]
    assert build_parser().parse_args(["--shards", "s"]).model == []
    assert "--checkpoint" not in build_parser().format_help()
