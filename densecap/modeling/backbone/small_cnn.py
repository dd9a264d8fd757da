"""``small_cnn``: a small, fast network for CPU training on the synthetic dataset.

Plain 3x3 conv + norm + ReLU stages (width ``w = MODEL.BACKBONE.WIDTH``)::

    stage1  stride 2   3   -> w/2
    stage2  stride 4   w/2 -> w,   w -> w
    stage3  stride 8   w   -> 2w,  2w -> 2w
    stage4  STRIDE 8:  2w  -> 2w dilated 2, 2w -> 2w dilated 4   (context, keeps resolution)
            STRIDE 16: 2w  -> 4w stride 2,  4w -> 4w

``MODEL.BACKBONE.STRIDE`` picks 8 or 16; ``MODEL.BACKBONE.NORM``: "" or "GN" (default), "BN",
"none". Meant to be trained from scratch (``WEIGHTS`` empty).

``MODEL.BACKBONE.RGB_SKIP`` appends the normalised input averaged over each stride x stride cell
(3 channels) to the output: class-agnostic detection training quickly makes learned features
colour-invariant (a linear probe of the pooled features reads the object colour at chance level
after ~1000 iterations), while captions need the colour; this path keeps it.
"""
from __future__ import annotations

import logging
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BACKBONE_REGISTRY, Backbone, norm_layer_factory
from .weights import load_backbone_weights

logger = logging.getLogger(__name__)


def _conv(cin: int, cout: int, norm, stride: int = 1, dilation: int = 1) -> List[nn.Module]:
    layers: List[nn.Module] = [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=norm is None)
    ]
    if norm is not None:
        layers.append(norm(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class SmallCNN(Backbone):
    def __init__(self, *, width: int = 64, stride: int = 8, norm: str = "GN", rgb_skip: bool = False) -> None:
        super().__init__()
        if stride not in (8, 16):
            raise ValueError(f"small_cnn: MODEL.BACKBONE.STRIDE must be 8 or 16, got {stride}")
        w = int(width)
        nl = norm_layer_factory(norm, default="GN")
        s1 = nn.Sequential(*_conv(3, w // 2, nl, stride=2))
        s2 = nn.Sequential(*_conv(w // 2, w, nl, stride=2), *_conv(w, w, nl))
        s3 = nn.Sequential(*_conv(w, 2 * w, nl, stride=2), *_conv(2 * w, 2 * w, nl))
        if stride == 8:
            s4 = nn.Sequential(*_conv(2 * w, 2 * w, nl, dilation=2), *_conv(2 * w, 2 * w, nl, dilation=4))
            cout = 2 * w
        else:
            s4 = nn.Sequential(*_conv(2 * w, 4 * w, nl, stride=2), *_conv(4 * w, 4 * w, nl))
            cout = 4 * w
        self.stages = nn.ModuleList([s1, s2, s3, s4])
        self.rgb_skip = bool(rgb_skip)
        self.stride = int(stride)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.out_features = ["out"]
        self.out_channels = cout + (3 if self.rgb_skip else 0)
        self.strides = {"out": int(stride)}
        self.rpn_features = ["out"]
        self.roi_features = ["out"]
        self.size_divisibility = int(stride)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        img = x
        for stage in self.stages:
            x = stage(x)
        if self.rgb_skip:
            rgb = F.avg_pool2d(img, self.stride, ceil_mode=True)  # N 3 H/s W/s
            x = torch.cat([x, rgb[:, :, : x.shape[2], : x.shape[3]]], dim=1)
        return {"out": x}


@BACKBONE_REGISTRY.register("small_cnn")
def build_small_cnn(cfg) -> Backbone:
    net = SmallCNN(
        width=cfg.MODEL.BACKBONE.WIDTH, stride=cfg.MODEL.BACKBONE.STRIDE, norm=cfg.MODEL.BACKBONE.NORM,
        rgb_skip=cfg.MODEL.BACKBONE.RGB_SKIP,
    )
    if cfg.MODEL.BACKBONE.WEIGHTS:
        load_backbone_weights(net, cfg.MODEL.BACKBONE.WEIGHTS)
    return net
