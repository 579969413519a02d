"""Evaluation plots: real PNGs, drawn headless, with the boxes where the geometry puts them."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from snapper.crop import CropGeometry
from snapper.evaluation import plots
from snapper.evaluation.metrics import box_table, confidence_report


def _table(rng: np.random.Generator, n: int = 200) -> pd.DataFrame:
    true = np.cumsum(rng.uniform(10, 50, (n, 4)), axis=1)
    rough = true + rng.normal(0, 4, (n, 4))
    pred = true + rng.normal(0, 1, (n, 4))
    conf = rng.uniform(0, 1, (n, 4))
    ids = np.arange(n)
    return pd.concat([box_table(pred, true, annotation_id=ids, rough_xyxy=rough, confidence=conf, method="snapper"),
                      box_table(rough, true, annotation_id=ids, rough_xyxy=rough, method="identity")],
                     ignore_index=True)


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_histograms_and_calibration_are_pngs(tmp_path) -> None:
    df = _table(np.random.default_rng(0))
    hist = _png(plots.deviance_histograms(df, tmp_path / "dev.png"))
    report = confidence_report(df[df["method"] == "snapper"], flag_percents=(5, 10, 20))
    cal = _png(plots.confidence_calibration(report, tmp_path / "cal.png"))
    assert hist.shape[1] > 600 and cal.shape[1] > 600
    assert hist.std() > 10 and cal.std() > 10  # something was drawn, not a blank canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.png", "dev.png"]  # no temp files left


def test_example_grid_draws_the_true_box_where_the_geometry_maps_it(tmp_path) -> None:
    size = 64
    geo = CropGeometry.around(np.array([[100.0, 50.0, 140.0, 90.0]]), size, context=1.4)
    true = np.array([[104.0, 54.0, 136.0, 86.0]])
    ex = {"crop": np.zeros((3, size, size), np.uint8), "window": geo.windows[0], "rough": [100, 50, 140, 90],
          "true": true[0], "pred": true[0] + 50, "input_size": size, "iou": 0.9, "conf": [0.9, 0.8, 0.7, 0.6],
          "method": "snapper", "annotation_id": 7}
    img = _png(plots.example_grid([ex], tmp_path / "ex.png", ncols=1))
    green = (img[..., 1] > 200) & (img[..., 0] < 80) & (img[..., 2] < 80)
    ys, xs = np.nonzero(green)
    assert len(xs) > 50, "the true box (lime) is drawn"
    # Its outline spans the same fraction of the crop as the geometry says.
    x0, _, x1, _ = geo.to_input(true)[0] / size
    frac = (xs.max() - xs.min()) / max(1, (img.shape[1] - 1))
    assert abs(frac - (x1 - x0)) < 0.25
