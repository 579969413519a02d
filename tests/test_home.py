"""One resolver of the project home: ``$SNAPPER_HOME``, else a default, else the working directory."""

from __future__ import annotations

from pathlib import Path

from snapper.home import HOME_ENV, home, resolve


def test_home_and_resolve(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(HOME_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert home() == tmp_path.resolve()
    assert home(default=tmp_path / "repo") == (tmp_path / "repo").resolve()
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "h"))
    assert home() == home(default="/elsewhere") == (tmp_path / "h").resolve()  # the variable wins
    assert resolve("runs/demo") == (tmp_path / "h").resolve() / "runs" / "demo"
    assert resolve(tmp_path / "abs") == tmp_path / "abs"


def test_everyone_asks_the_same_resolver(tmp_path: Path, monkeypatch) -> None:
    from flows import common
    from flows.stack import stack_from_args
    from snapper.mlops import tracking

    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    assert common.home() == tracking.project_root() == stack_from_args(None).home == tmp_path.resolve()
    assert common.resolve("data") == tmp_path.resolve() / "data"
