"""``snapper <command>``: the dispatcher and what every command shares."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from snapper.cli import COMMANDS, main
from snapper.cli.common import apply_sets, positive_float, positive_int, run, unit_float
from snapper.config import EvalConfig


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
    assert apply_sets(p, EvalConfig(), ["batch_size=8"]).batch_size == 8
    with pytest.raises(SystemExit) as e:
        apply_sets(p, EvalConfig(), ["batch_size=lots"])
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
        raise FileNotFoundError("/nowhere/model.pt: no such checkpoint")

    def bug() -> int:
        raise KeyError("a bug, not the user's input")

    assert run("snapper x", missing) == 2
    assert capsys.readouterr().err == "snapper x: /nowhere/model.pt: no such checkpoint\n"
    with pytest.raises(KeyError):
        run("snapper x", bug)
