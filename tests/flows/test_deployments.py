"""prefect.yaml: every deployment points at a Prefect flow that exists and accepts the
parameters the deployment sets (a typo here only shows when someone runs the deployment)."""

from __future__ import annotations

import importlib
import inspect

import pytest
import yaml

from flows.common import REPO

pytest.importorskip("prefect")

DEPLOYMENTS = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def _flow(dep: dict):
    path, func = dep["entrypoint"].split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: f"{d['entrypoint']}/{d['name']}")
def test_entrypoint_is_a_flow_taking_the_deployment_parameters(dep: dict) -> None:
    from prefect import Flow

    flow = _flow(dep)
    assert isinstance(flow, Flow)
    accepted = set(inspect.signature(flow.fn).parameters)
    assert set(dep.get("parameters") or {}) <= accepted, f"unknown parameters: {set(dep['parameters']) - accepted}"


def test_the_adapt_deployment_is_the_documented_one() -> None:
    names = {f"{_flow(d).name}/{d['name']}" for d in DEPLOYMENTS}  # what `prefect deployment run` takes
    assert {"adapt-snapper/default", "train-snapper/demo", "batch-snap/default"} <= names
    assert "prefect deployment run 'adapt-snapper/default'" in (REPO / "README.md").read_text()
