"""The noise report on the paper's own protocol: coco128-train's boxes jittered as the models
here are trained (``snapper.geometry.jitter_by_annotation``, seed 0) against the same boxes.
What a team's ``snapper noise-report`` should be compared with (README, "How far off are your
annotators' boxes?").

    .venv/bin/python experiments/noise_paper_protocol.py [--out experiments/results/noise-paper-protocol]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snapper.cli import main as cli  # noqa: E402
from snapper.geometry import jitter_by_annotation, xywh_to_xyxy, xyxy_to_xywh  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "coco128-train" / "annotations.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "noise-paper-protocol"))
    args = ap.parse_args()
    if not DATA.is_file():
        print(f"{DATA} is not present")
        return 0
    data = json.loads(DATA.read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    for a in data["annotations"]:
        if not a.get("iscrowd"):
            w, h = sizes[a["image_id"]]
            rough = jitter_by_annotation(xywh_to_xyxy(np.array(a["bbox"], float)), [a["id"]], w, h)
            a["bbox"] = [float(v) for v in xyxy_to_xywh(rough)[0]]
    with tempfile.TemporaryDirectory() as tmp:
        rough_file = Path(tmp) / "rough.json"
        rough_file.write_text(json.dumps(data))
        return cli(["noise-report", str(rough_file), str(DATA), args.out])


if __name__ == "__main__":
    raise SystemExit(main())
