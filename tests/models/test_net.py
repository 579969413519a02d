"""Model: shapes, gradients, precision, pretrained weights, and (end to end) that targets, loss and
decoding agree with the crop geometry."""

import numpy as np
import pytest
import torch

from snapper.config import ModelConfig
from snapper.crop import CropGeometry, to_uint8
from snapper.geometry import jitter_boxes
from snapper.models.net import build_model

TINY = dict(trunk="resnet18", input_size=64, fpn_channels=32, decoder_channels=32, decoder_layers=2)


@pytest.mark.parametrize("head", ["edges", "regression"])
def test_shapes_and_backward(head):
    cfg = ModelConfig(head=head, **TINY)
    m = build_model(cfg)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    out = m(x)
    loss = m.loss(out, torch.rand(2, 4) * 64)
    loss.backward()
    pos, conf = m.decode(out)
    assert pos.shape == (2, 4) and conf.shape == (2, 4)
    assert ((pos >= 0) & (pos <= 64)).all()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_confidence_accounts_for_the_crop_scale():
    """The same distribution is less trustworthy for a big box: one input px is many original px."""
    m = build_model(ModelConfig(**TINY)).eval()
    logits = torch.zeros(1, 4, 65)
    logits[..., 30], logits[..., 31], logits[..., 32] = 6.0, 4.0, 2.0
    _, at_1 = m.decode(logits, torch.ones(1, 4))
    _, at_4 = m.decode(logits, torch.full((1, 4), 4.0))
    _, default = m.decode(logits)
    assert torch.equal(at_1, default) and (at_4 < at_1).all()


def test_channels_last_and_bf16_autocast():
    m = build_model(ModelConfig(**TINY)).to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        loss = m.loss(out, torch.rand(2, 4) * 64)
    assert torch.isfinite(loss)
    loss.backward()


def test_imagenet_weights_fail_clearly_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: must try to download

    def no_network(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError, match="ImageNet weights"):
        build_model(ModelConfig(trunk="resnet18", weights="imagenet"))


def test_imagenet_weights_load_from_local_cache(monkeypatch, tmp_path):
    """Users who are online get torchvision's file; here we place a file of the same name."""
    import torchvision

    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    ref = torchvision.models.resnet18(weights=None)
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.save(ref.state_dict(), ckpt_dir / w.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    m = build_model(ModelConfig(trunk="resnet18", weights="imagenet", input_size=64))
    assert torch.equal(m.trunk.stem[0].weight, ref.conv1.weight)


def _scene(rng, size=96):
    """A dark image with one bright rectangle; exact integer box."""
    img = torch.full((3, size, size), 30, dtype=torch.uint8)
    x0, y0 = rng.integers(8, 40, 2)
    w, h = rng.integers(20, 48, 2)
    img[:, y0 : y0 + h, x0 : x0 + w] = torch.tensor([200, 160, 90], dtype=torch.uint8).view(3, 1, 1)
    return img, np.array([[x0, y0, x0 + w, y0 + h]], dtype=np.float64)


def test_overfit_tiny_model_reaches_sub_pixel_edges():
    """Targets, loss and decoding must agree: a tiny model memorising a few crops puts >= 95%
    of edges within 1 original pixel of the truth after mapping back through the crop."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = ModelConfig(**TINY)
    crops, targets, windows, truths = [], [], [], []
    for _ in range(8):
        img, true = _scene(rng)
        rough = jitter_boxes(true, 96, 96, rng)
        geo = CropGeometry.around(rough, cfg.input_size, cfg.context)
        crops.append(to_uint8(geo.cut(img)))
        targets.append(torch.tensor(geo.targets(true), dtype=torch.float32))
        windows.append(geo)
        truths.append(true)
    x, t = torch.cat(crops), torch.cat(targets)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def within_1px() -> float:
        model.eval()
        with torch.no_grad():
            pos, _ = model.decode(model(x))
        pred = CropGeometry.concat(windows).to_original(pos.double().numpy())
        return float((np.abs(pred - np.concatenate(truths)) < 1.0).mean())

    for step in range(1, 151):  # checked every 25 steps: the first check that passes ends the test
        model.train()
        loss = model.loss(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 and (share := within_1px()) >= 0.95:
            break
    assert share >= 0.95, f"edges within 1 px: {share:.2%}, loss {loss.item():.3f}"


def test_frozen_trunk_batchnorm_stays_in_eval_mode_while_training():
    m = build_model(ModelConfig(**TINY))
    m.trunk_bn_frozen = True
    m.train()
    bns = [x for x in m.trunk.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert bns and not any(b.training for b in bns)
    assert m.fuse.training and m.trunk.training  # only the statistics are kept, the rest trains
    before = bns[0].running_mean.clone()
    m(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert torch.equal(bns[0].running_mean, before)


def test_regression_head_keeps_where_things_are():
    """A spatial grid, not global pooling: moving the object moves the prediction."""
    from snapper.models.net import RegressionNet

    m = build_model(ModelConfig(head="regression", **TINY))
    assert isinstance(m, RegressionNet)
    assert m.box_head[1].in_features == TINY["fpn_channels"] * RegressionNet.grid**2
    pos, conf = m.decode(m(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)))
    lo = (1 - 1 / ModelConfig().context) / 2 * 64
    assert torch.allclose(pos, torch.tensor([[lo, lo, 64 - lo, 64 - lo]]), atol=1.0)  # starts at the rough box
    assert torch.isnan(conf).all()
