"""Table 1 against true boxes with the same annotation ids."""

from __future__ import annotations

import json

from snapper import batch as B
from tests.batchdata import fast_config as cfg


def test_truth_gives_table1_for_input_and_output(rough, ckpt, tmp_path):
    ann, images, data = rough
    truth = json.loads(json.dumps(data))
    for a in truth["annotations"]:
        if a["id"] in (1001, 1012, 1013, 2001, 2002, 2003):
            a["bbox"] = [15, 12, 40, 28]
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    r = B.batch_snap(ann, images, tmp_path / "out", ckpt, cfg(), truth=tmp_path / "gt.json")
    t = r.summary["truth"]
    n_snapped = r.summary["status"]["snapped"]
    assert t["n_evaluated"] + t["n_snapped_without_truth"] == n_snapped and t["n_evaluated"] >= 6
    rows = {x["method"]: x for x in t["table1"] if x["size"] == "all"}
    assert set(rows) == {"input", "snapper"} and rows["input"]["n_boxes"] == t["n_evaluated"]
    assert 0 <= rows["input"]["miou"] <= 100
    assert (tmp_path / "out" / "table1.csv").is_file()
