"""The zoom-in pass: strip geometry (every edge in one canonical orientation, exact round trip),
which edges get a second look, training strips, the model's strip decoder, and ``passes=2``
through Snapper, evaluation, batch snapping and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from snapper import batch as B
from snapper.cli import main as cli
from snapper.config import EvalConfig, ModelConfig, SnapSettings
from snapper.crop import CropGeometry, crop_images, cut_crops
from snapper.evaluation.evaluate import evaluate
from snapper.inference.snap import Snapper
from snapper.models.checkpoint import read_config, save_checkpoint
from snapper.models.net import build_model
from snapper.training.loop import train
from snapper.zoom import StripGeometry, check_passes, simulate_first_pass, training_strips, zoom_edges
from tests.batchdata import fast_config
from tests.helpers import make_tiny_shards, tiny_train_config

ZOOM = ModelConfig(trunk="resnet18", input_size=32, fpn_channels=16, decoder_channels=16, decoder_layers=2,
                   zoom=True)


def _rect_image(box: tuple[int, int, int, int], hw: tuple[int, int] = (300, 400)) -> torch.Tensor:
    img = torch.zeros(3, *hw, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    img[:, y0:y1, x0:x1] = 255
    return img


def test_strips_show_every_edge_upright_with_the_object_to_its_right():
    box = np.array([100.0, 50, 300, 250])
    cfg = ModelConfig(input_size=64, zoom=True)
    geo = StripGeometry.around(np.repeat(box[None], 4, 0), np.arange(4), cfg)
    strips = geo.cut(_rect_image((100, 50, 300, 250)))
    assert strips.shape == (4, 3, cfg.zoom_length, 64)
    for k in range(4):
        profile = strips[k, 0, cfg.zoom_length // 2]  # across the edge, halfway along it
        assert profile[:31].max() < 5 and profile[33:].min() > 250, (k, profile)
    np.testing.assert_allclose(geo.targets(np.repeat(box[None], 4, 0)), 32.0)


def test_strip_targets_and_positions_round_trip_for_every_edge():
    rng = np.random.default_rng(0)
    cfg = ModelConfig(input_size=64, zoom=True, zoom_scale=1.5)
    pred = np.array([[100.0, 50, 300, 250]] * 4)
    true = pred + rng.uniform(-20, 20, pred.shape)
    geo = StripGeometry.around(pred, np.arange(4), cfg)
    np.testing.assert_allclose(geo.scale, 1.5)
    u = geo.targets(true)
    np.testing.assert_allclose(geo.to_original(u), true[np.arange(4), np.arange(4)])
    # moving the true edge outwards lowers u for every edge (u counts from the outside in)
    outward = true + np.array([-5.0, -5, 5, 5])
    assert (geo.targets(outward) < u).all()


@pytest.mark.parametrize("hw", [(32, 128), (128, 32), (40, 40)])
def test_the_cpu_kernel_cuts_non_square_crops_like_roi_align(hw):
    img = torch.randint(0, 255, (3, 200, 300), dtype=torch.uint8)
    win = np.array([[10.3, 20.1, 150.7, 90.2], [-20, -5, 40, 300], [250, 100, 320, 180]])
    mirror = np.array([True, False, True])
    a = cut_crops(img, win, hw, mirror=mirror)
    b = crop_images(img, win, hw)
    b[torch.from_numpy(mirror)] = b[torch.from_numpy(mirror)].flip(-1)
    assert a.shape == (3, 3, *hw)
    assert (a - b).abs().max() < 0.01


def test_only_coarse_edges_get_a_second_look():
    cfg = ModelConfig(input_size=64, zoom=True)  # threshold 1.5 original px per input px
    first = CropGeometry.around(np.array([[0.0, 0, 40, 40], [0, 0, 200, 40], [0, 0, 200, 200]]), 64, 1.4)
    np.testing.assert_array_equal(zoom_edges(first, cfg), [[0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]])


def test_training_strips_draw_nothing_when_no_box_qualifies():
    cfg = ModelConfig(input_size=64, zoom=True)
    small = np.array([[0.0, 0, 40, 40]])
    rng = np.random.default_rng(0)
    boxes, geo = training_strips(small, CropGeometry.around(small, 64, 1.4), cfg, 1.5, rng)
    assert len(boxes) == 0 and len(geo) == 0
    assert rng.random() == np.random.default_rng(0).random()  # the stream's draws are unchanged
    big = np.array([[0.0, 0, 40, 40], [10, 10, 300, 60]])
    boxes, geo = training_strips(big, CropGeometry.around(big, 64, 1.4), cfg, 1.5, rng)
    assert boxes.tolist() == [1] and geo.edges[0] in (0, 2)  # only its x edges are coarse


def test_simulated_first_pass_errors_scale_with_the_crop():
    true = np.array([[0.0, 0, 100, 100], [0, 0, 1000, 1000]] * 500)
    first = CropGeometry.around(true, 100, 1.4)
    err = simulate_first_pass(true, first, 1.5, np.random.default_rng(0)) - true
    small, large = err[0::2].std(), err[1::2].std()
    assert 9 < large / small < 11  # 10x the crop: 10x the error in original px
    assert abs(small - 1.5 * 1.4) < 0.2


def test_a_model_without_the_zoom_decoder_refuses_two_passes():
    plain = ModelConfig(input_size=32)
    assert plain.passes == (1,) and ZOOM.passes == (1, 2)
    with pytest.raises(ValueError, match="model.zoom=true"):
        check_passes(plain, 2, "ckpt/x")
    with pytest.raises(ValueError, match="1 or 2"):
        check_passes(ZOOM, 3)
    with pytest.raises(ValueError, match="edge head"):
        build_model(ModelConfig(head="regression", zoom=True))


def test_the_strip_loss_joins_the_crop_loss():
    torch.manual_seed(0)
    net = build_model(ZOOM).train()
    crops, strips = torch.rand(4, 3, 32, 32) * 255, torch.rand(3, 3, ZOOM.zoom_length, 32) * 255
    logits, zoom = net(crops, strips)
    assert logits.shape == (4, 4, 33) and zoom.shape == (3, 33)
    loss = net.loss((logits, zoom), torch.full((4, 4), 10.0), torch.full((3,), 16.0))
    loss.backward()
    assert net.zoom.fine[-1].weight.grad.abs().sum() > 0


def _zoom_checkpoint(tmp_path) -> str:
    torch.manual_seed(0)
    return str(save_checkpoint(tmp_path / "zoom", build_model(ZOOM), ZOOM))


def test_snap_with_two_passes_changes_only_coarse_edges(tmp_path):
    s = Snapper.from_checkpoint(_zoom_checkpoint(tmp_path), device="cpu", guard=False)
    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((240, 320, 3)) * 255).astype(np.uint8))
    boxes = [[50, 40, 200, 20], [10, 10, 16, 16]]  # wide: its x edges are coarse; small: nothing is
    one, two = s.snap(photo, boxes, passes=1), s.snap(photo, boxes, passes=2)
    np.testing.assert_allclose(two.boxes[1], one.boxes[1])
    x0_1, x1_1 = one.boxes[0, 0], one.boxes[0, 0] + one.boxes[0, 2]
    x0_2, x1_2 = two.boxes[0, 0], two.boxes[0, 0] + two.boxes[0, 2]
    assert (x0_1, x1_1) != (x0_2, x1_2)
    np.testing.assert_allclose(two.boxes[0, [1, 3]], one.boxes[0, [1, 3]])
    assert json.loads(json.dumps(two.to_json()))


def test_a_zoom_run_trains_strips_says_so_and_evaluates_both_ways(tmp_path):
    shards = make_tiny_shards(tmp_path)
    r = train(tiny_train_config(shards, tmp_path / "run", model={"zoom": True}))
    cfg, meta = read_config(r.best_checkpoint)
    assert cfg.zoom and meta["passes"] == [1, 2]
    res = evaluate({"one": r.best_checkpoint, "two": r.best_checkpoint},
                   EvalConfig(shards=shards["val"], snap=SnapSettings(device="cpu")), tmp_path / "eval", plots=False,
                   passes={"two": 2})
    df = pd.read_parquet(res.parquet)
    one, two = df[df.method == "one"], df[df.method == "two"]
    assert one["annotation_id"].tolist() == two["annotation_id"].tolist()
    assert not np.allclose(one[["pred_x", "pred_w"]].to_numpy(), two[["pred_x", "pred_w"]].to_numpy())


def test_cli_refuses_two_passes_on_a_one_pass_model_in_one_line(tmp_path, photo, capsys):
    torch.manual_seed(0)
    plain = ModelConfig(trunk="resnet18", input_size=32, fpn_channels=16, decoder_channels=16, decoder_layers=2)
    ckpt = save_checkpoint(tmp_path / "plain", build_model(plain), plain)
    assert cli(["snap", str(photo), "--box", "18,12,55,26", "--model", str(ckpt), "--device", "cpu",
                "--passes", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.zoom=true" in err[0]


def test_batch_snap_with_two_passes_accounts_for_every_box_and_matches_the_api(tmp_path, rough_zoom):
    ann, images, data = rough_zoom
    ckpt = _zoom_checkpoint(tmp_path)
    one = B.batch_snap(ann, images, tmp_path / "one", ckpt, fast_config())
    two = B.batch_snap(ann, images, tmp_path / "two", ckpt, fast_config(passes=2))
    a, b = pd.read_parquet(one.boxes), pd.read_parquet(two.boxes)
    assert a["annotation_id"].tolist() == b["annotation_id"].tolist()
    assert (a["status"] == b["status"]).all()
    res = Snapper.from_checkpoint(ckpt, device="cpu", guard=False).snap(images / "a.jpg", [data["annotations"][0]["bbox"]], passes=2)
    row = b.set_index("annotation_id").loc[data["annotations"][0]["id"]]
    np.testing.assert_allclose(row[B.PRED_COLS].to_numpy(dtype=float), res.boxes[0], atol=1e-3)
    names = {p.name for p in (tmp_path / "one" / "chunks").glob("*.parquet")}
    assert names.isdisjoint(p.name for p in (tmp_path / "two" / "chunks").glob("*.parquet"))


@pytest.fixture
def rough_zoom(tmp_path):
    """One 320x240 photo with a large and a small rough box (COCO)."""
    images = tmp_path / "images"
    images.mkdir()
    arr = (np.random.default_rng(1).random((240, 320, 3)) * 60).astype(np.uint8)
    arr[40:200, 60:280] = (200, 120, 40)
    Image.fromarray(arr).save(images / "a.jpg", quality=95)
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 320, "height": 240}],
            "annotations": [{"id": 11, "image_id": 1, "category_id": 1, "bbox": [55, 35, 230, 170], "area": 1,
                             "iscrowd": 0},
                            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 1,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "thing"}]}
    ann = tmp_path / "rough.json"
    ann.write_text(json.dumps(data))
    return ann, images, data


@pytest.mark.parametrize("passes", [1, 2])
def test_flip_averaging_makes_snapping_mirror_symmetric(tmp_path, passes):
    """With flip=True a mirrored photo and box give the mirrored answer (an untrained model
    alone does not), for the first pass and for the strips of the second."""
    ckpt = _zoom_checkpoint(tmp_path)
    rng = np.random.default_rng(1)
    arr = (rng.random((240, 320, 3)) * 255).astype(np.uint8)
    boxes = np.array([[50.0, 40.0, 200.0, 60.0], [10.0, 120.0, 30.0, 30.0]])  # the wide one gets strips
    mirrored = boxes.copy()
    mirrored[:, 0] = 320 - boxes[:, 0] - boxes[:, 2]

    def unmirror(r):
        b = r.boxes.copy()
        b[:, 0] = 320 - r.boxes[:, 0] - r.boxes[:, 2]
        return b, r.confidence[:, [2, 1, 0, 3]]

    for flip in (True, False):
        s = Snapper.from_checkpoint(ckpt, device="cpu", flip=flip, guard=False)
        a = s.snap(Image.fromarray(arr), boxes, passes=passes)
        b, conf = unmirror(s.snap(Image.fromarray(arr[:, ::-1].copy()), mirrored, passes=passes))
        if flip:
            np.testing.assert_allclose(b, a.boxes, atol=2e-3)
            np.testing.assert_allclose(conf, a.confidence, atol=2e-3)
        else:
            assert np.abs(b - a.boxes).max() > 0.05  # the check above can fail


def test_batch_snap_and_the_cli_with_flip_match_the_api(tmp_path, rough_zoom, capsys):
    ann, images, data = rough_zoom
    ckpt = _zoom_checkpoint(tmp_path)
    r = B.batch_snap(ann, images, tmp_path / "flip", ckpt, fast_config(passes=2, flip=True))
    got = pd.read_parquet(r.boxes).set_index("annotation_id").loc[11, B.PRED_COLS].to_numpy(dtype=float)
    res = Snapper.from_checkpoint(ckpt, device="cpu", flip=True, guard=False).snap(images / "a.jpg", [data["annotations"][0]["bbox"]],
                                                                      passes=2)
    np.testing.assert_allclose(got, res.boxes[0], atol=1e-3)
    assert cli(["snap", str(images / "a.jpg"), "--box", "55,35,230,170", "--model", ckpt, "--device", "cpu",
                "--passes", "2", "--flip", "--no-guard"]) == 0
    out = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(out["boxes"][0]["bbox"], res.boxes[0], atol=1e-3)
