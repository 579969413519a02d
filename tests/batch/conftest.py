"""Fixtures shared by the batch tests: one tiny checkpoint per module, a fresh rough file per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.batchdata import make_rough, tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")


@pytest.fixture
def rough(tmp_path):
    """(rough.json, images folder, the JSON as a dict)."""
    return make_rough(tmp_path / "in")
