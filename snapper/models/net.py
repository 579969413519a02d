"""The Snapper network and the regression baseline.

SnapperNet (the published design, details ours):
  trunk (ResNet or EfficientNet-Lite, see ``trunks``) -> FPN-style top-down fusion of C2..C5 to stride 4 -> directional pooling
  (mean + max over x gives a sequence along y for top/bottom; over y gives one along x for
  left/right) -> four independent 1-D conv decoders (one per edge) -> logits over
  ``num_bins`` positions per edge.

Why these choices:
  * Stride-4 fusion keeps edge evidence at 4 input px; a stride-2 skip from the stem is
    pooled the same way and joined before the last layers so the decoders see 2-px detail.
    Sub-pixel output then comes from the distribution (see ``edges.decode_edges``).
  * mean+max pooling: mean sees long straight edges, max sees short/partial ones.
  * a coordinate channel tells each decoder where in the crop it is; the rough box sits at
    a known place (1/context of the crop), which is a strong prior for a decoupled 1-D model.
  * separate decoders per edge keep edges decoupled (the paper's point): a clear edge is never
    dragged by an unclear one.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from snapper.config import ModelConfig
from snapper.errors import ConfigError
from snapper.models.edges import decode_edges, edge_loss
from snapper.models.trunks import build_trunk


class TopDownFusion(nn.Module):
    """FPN-style: 1x1 laterals, nearest upsampling and sums from C5 down to C2, one 3x3 smooth."""

    def __init__(self, in_channels: tuple[int, ...], out: int):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, out, 1) for c in in_channels])
        self.smooth = nn.Sequential(nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            x = lat(f) + F.interpolate(x, size=f.shape[-2:], mode="nearest")
        return self.smooth(x)


def directional_pool(fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> sequences along x (B, 2C, W) and along y (B, 2C, H) (mean and max)."""
    along_x = torch.cat([fmap.mean(2), fmap.amax(2)], dim=1)
    along_y = torch.cat([fmap.mean(3), fmap.amax(3)], dim=1)
    return along_x, along_y


def _with_coords(seq: torch.Tensor) -> torch.Tensor:
    n = seq.shape[-1]
    coord = torch.linspace(-1.0, 1.0, n, device=seq.device, dtype=seq.dtype).expand(seq.shape[0], 1, n)
    return torch.cat([seq, coord], dim=1)


def _conv1d(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm1d(cout),
        nn.ReLU(inplace=True),
    )


class EdgeDecoder(nn.Module):
    """One edge: dilated 1-D convs at stride 4, a stride-2 skip, logits at every bin."""

    def __init__(self, cin: int, cskip: int, width: int, layers: int, num_bins: int):
        super().__init__()
        blocks = [_conv1d(cin + 1, width)]
        blocks += [_conv1d(width, width, dilation=2 ** (i % 3 + 1)) for i in range(layers - 1)]
        self.coarse = nn.Sequential(*blocks)
        self.fine = nn.Sequential(_conv1d(width + cskip + 1, width // 2), nn.Conv1d(width // 2, 1, 3, padding=1))
        self.num_bins = num_bins

    def forward(self, seq: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.coarse(_with_coords(seq))
        x = F.interpolate(x, size=skip.shape[-1], mode="linear", align_corners=False)
        x = _with_coords(torch.cat([x, skip], dim=1))
        # Sequence position i covers input pixels [2i, 2i+2); bins sit on pixel boundaries.
        x = F.interpolate(x, size=self.num_bins, mode="linear", align_corners=True)
        return self.fine(x).squeeze(1)


class _TrunkModel(nn.Module):
    """What both heads share: ``trunk_bn_frozen`` keeps the trunk's BatchNorm layers in eval
    mode whenever the model trains (see ``TrainConfig.freeze_trunk_bn``)."""

    trunk: nn.Module
    trunk_bn_frozen = False

    def train(self, mode: bool = True) -> "_TrunkModel":
        super().train(mode)
        if mode and self.trunk_bn_frozen:
            for m in self.trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


class SnapperNet(_TrunkModel):
    """Edge classification over positions (the paper's model)."""

    head = "edges"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.trunk = build_trunk(cfg)
        self.fuse = TopDownFusion(self.trunk.channels, cfg.fpn_channels)
        cskip = 32
        self.skip = nn.Sequential(nn.Conv2d(self.trunk.stem_channels, cskip, 1, bias=False), nn.BatchNorm2d(cskip), nn.ReLU(inplace=True))
        self.decoders = nn.ModuleList(
            [EdgeDecoder(2 * cfg.fpn_channels, 2 * cskip, cfg.decoder_channels, cfg.decoder_layers, cfg.num_bins)
             for _ in range(4)]
        )
        # The zoom-in pass (snapper.zoom): one decoder for canonical strips of all four edges.
        self.zoom = (EdgeDecoder(2 * cfg.fpn_channels, 2 * cskip, cfg.decoder_channels, cfg.decoder_layers,
                                 cfg.num_bins) if cfg.zoom else None)

    def forward(self, images: torch.Tensor,
                strips: torch.Tensor | None = None) -> "torch.Tensor | tuple[torch.Tensor, torch.Tensor]":
        """uint8/float (B, 3, S, S) in [0, 255] -> logits (B, 4, num_bins), edges left, top, right,
        bottom; with ``strips`` (K, 3, L, S) also their zoom logits (K, num_bins), in one call so
        that DDP sees one forward per backward."""
        stem, feats = self.trunk(images)
        x_seq, y_seq = directional_pool(self.fuse(feats))
        x_skip, y_skip = directional_pool(self.skip(stem))
        seqs = ((x_seq, x_skip), (y_seq, y_skip), (x_seq, x_skip), (y_seq, y_skip))
        logits = torch.stack([dec(s, k) for dec, (s, k) in zip(self.decoders, seqs)], dim=1)
        if strips is None:
            return logits
        return logits, self.forward_strips(strips)

    def forward_strips(self, strips: torch.Tensor) -> torch.Tensor:
        """Canonical strips (K, 3, L, S) (edge upright, object to its right) -> (K, num_bins)."""
        if self.zoom is None:
            raise ConfigError("this model has no zoom-in decoder (trained without model.zoom): use passes=1")
        stem, feats = self.trunk(strips)
        x_seq, _ = directional_pool(self.fuse(feats))
        x_skip, _ = directional_pool(self.skip(stem))
        return self.zoom(x_seq, x_skip)

    def loss(self, out: "torch.Tensor | tuple[torch.Tensor, torch.Tensor]", target: torch.Tensor,
             strip_target: torch.Tensor | None = None) -> torch.Tensor:
        """Edge loss of the crops, plus that of the strips (same per-edge weight) when given."""
        if strip_target is None:
            return edge_loss(out, target, self.cfg.input_size)
        logits, zoom = out
        n_edges, n_strips = logits.shape[0] * 4, zoom.shape[0]
        crops = edge_loss(logits, target, self.cfg.input_size)
        strips = edge_loss(zoom.unsqueeze(1), strip_target.view(-1, 1), self.cfg.input_size)
        return (crops * n_edges + strips * n_strips) / (n_edges + n_strips)

    @torch.no_grad()
    def decode(self, out: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (input px) and confidence: the probability that each edge is within
        ``confidence_px`` original pixels; ``scale`` (B, 4) = original px per input px of each
        edge's axis (None: crops at original scale). Without the scale a large box, where one
        input pixel spans several original ones, would be trusted as much as a small one."""
        tol = self.cfg.confidence_px if scale is None else self.cfg.confidence_px / scale.to(out.device).float()
        return decode_edges(out, self.cfg.input_size, self.cfg.decode_window, tol)

    @torch.no_grad()
    def decode_strips(self, out: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zoom logits (K, num_bins) -> positions across (K,) in input px and confidence (K,);
        ``scale`` (K,) original px per input px across each strip."""
        tol = self.cfg.confidence_px / scale.to(out.device).float().view(-1, 1)
        pos, conf = decode_edges(out.unsqueeze(1), self.cfg.input_size, self.cfg.decode_window, tol)
        return pos[:, 0], conf[:, 0]


class RegressionNet(_TrunkModel):
    """The detection-style baseline the paper compares against: the same trunk, fusion and
    crop, then a spatial grid of the fused features (RoIAlign-like ``grid x grid`` average
    pooling over the whole crop, which is the RoI here), two fully-connected layers and a
    regressor of the four edge positions, as in torchvision's Faster R-CNN box head
    (``TwoMLPHead`` + box predictor). Smooth-L1 in input pixels. Global pooling would throw
    away where things are; the grid keeps it."""

    head = "regression"
    grid = 7
    hidden = 1024

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.trunk = build_trunk(cfg)
        self.fuse = TopDownFusion(self.trunk.channels, cfg.fpn_channels)
        self.box_head = nn.Sequential(
            nn.Flatten(), nn.Linear(cfg.fpn_channels * self.grid**2, self.hidden), nn.ReLU(inplace=True),
            nn.Linear(self.hidden, self.hidden), nn.ReLU(inplace=True))
        self.regressor = nn.Linear(self.hidden, 4)
        # Start at the rough box: it sits at (1 - 1/context)/2 .. (1 + 1/context)/2 of the crop.
        lo = (1 - 1 / cfg.context) / 2
        with torch.no_grad():
            self.regressor.weight.mul_(0.01)
            self.regressor.bias.copy_(torch.tensor([lo, lo, 1 - lo, 1 - lo]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, feats = self.trunk(images)
        grid = F.adaptive_avg_pool2d(self.fuse(feats), self.grid)
        return self.regressor(self.box_head(grid))  # (B, 4) in units of the crop size

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s = self.cfg.input_size
        return F.smooth_l1_loss(out.float() * s, target.float(), beta=1.0)

    @torch.no_grad()
    def decode(self, out: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        pos = (out.float() * self.cfg.input_size).clamp(0, self.cfg.input_size)
        return pos, torch.full_like(pos, float("nan"))


def build_model(cfg: ModelConfig) -> SnapperNet | RegressionNet:
    if cfg.head == "edges":
        return SnapperNet(cfg)
    if cfg.head == "regression":
        if cfg.zoom:
            raise ConfigError("model.zoom needs the edge head (model.head='edges'); the regression baseline has none")
        return RegressionNet(cfg)
    raise ConfigError(f"unknown head {cfg.head!r}; choose 'edges' or 'regression'")
