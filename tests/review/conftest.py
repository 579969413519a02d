"""A ``batch-snap`` output folder made by hand: what ``snapper review`` reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

W, H = 200, 100


def _ann(aid: int, iid: int, box: list[float], rough: list[float], conf: float = 0.9, status: str = "snapped",
         reason: str | None = None) -> dict[str, Any]:
    c = dict.fromkeys(("left", "top", "right", "bottom"), conf)
    return {"id": aid, "image_id": iid, "category_id": 1 + aid % 2, "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
            "snapper": {"status": status, "reason": reason, "rough_bbox": rough, "confidence": c}}


@pytest.fixture
def batch_out(tmp_path: Path) -> tuple[Path, Path]:
    """A batch output folder (3 images, one missing on disk; 6 annotations, 5 on the review list)."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (W, H), (90, 90, 90)).save(images / name)
    out = tmp_path / "out"
    out.mkdir()
    anns = [_ann(1, 1, [10, 10, 50, 40], [8, 12, 55, 40], 0.3), _ann(2, 1, [100, 20, 60, 50], [98, 20, 60, 52]),
            _ann(3, 1, [20, 60, 30, 30], [20, 60, 33, 30]), _ann(4, 2, [40, 20, 80, 60], [40, 22, 80, 60], 0.2),
            _ann(5, 3, [5, 5, 20, 20], [5, 5, 20, 20]), _ann(6, 2, [150, 10, 30, 30], [150, 10, 30, 30])]
    data = {"info": {"x": 1}, "images": [{"id": i, "file_name": n, "width": W, "height": H}
                                         for i, n in ((1, "a.jpg"), (2, "b.jpg"), (3, "gone.jpg"))],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}], "annotations": anns}
    (out / "snapped.json").write_text(json.dumps(data))
    pd.DataFrame({"annotation_id": [1, 2, 3, 4, 5], "review": ["low_confidence:left;low_confidence:top", "moved",
                                                                 "", "low_confidence:bottom", "moved"]}
                 ).to_csv(out / "review.csv", index=False)
    pd.DataFrame({"annotation_id": [4], "edge": ["right"], "confidence": [0.2]}).to_csv(out / "review_edges.csv",
                                                                                       index=False)
    return out, images


