"""Views of a finished run: counts and review tables, the markdown summary, MLflow metrics."""

from __future__ import annotations

import pytest

from snapper import batch as B
from snapper.batch import report as R
from tests.batchdata import EXPECTED, fast_config as cfg, make_rough


@pytest.fixture(scope="module")
def run(tmp_path_factory, ckpt):
    root = tmp_path_factory.mktemp("report")
    ann, images, _ = make_rough(root / "in")
    return B.batch_snap(ann, images, root / "out", ckpt, cfg())


def test_counts_table_adds_up(run):
    rows = R.counts_table(run.summary)
    assert sum(r["annotations"] for r in rows if r["status"] in ("snapped", "kept")) == len(EXPECTED)
    assert rows[-1]["status"] == "needs_review" and rows[-1]["annotations"] == run.summary["needs_review"]
    assert {r["reason"] for r in rows if r["status"] == "kept"} == {v[1] for v in EXPECTED.values() if v[0] == "kept"}


def test_review_table_is_the_head_of_review_csv(run):
    rows = R.review_table(run.out_dir)
    assert len(rows) == run.summary["needs_review"]
    assert len(R.review_table(run.out_dir, limit=3)) == 3 and R.review_table(run.out_dir, limit=3) == rows[:3]
    assert all(r["review"] for r in rows)


def test_markdown_and_metrics(run):
    md = R.summary_markdown("rough", run.summary)
    assert md.startswith("# Batch snap: rough") and f"needs review {run.summary['needs_review']}" in md
    m = R.tracking_metrics(run.summary)
    assert m["n_annotations"] == len(EXPECTED) and m["kept/non_finite"] == 4
    assert m["snapped"] + m["kept"] == len(EXPECTED)
    assert "confidence/left/q50" in m and "moved/moved_px/q95" in m and "confidence/left/n" not in m
