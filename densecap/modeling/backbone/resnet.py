"""ResNet-50 backbones: ``resnet50_c4`` (res4, 1024 channels, stride 16) and ``resnet50_fpn``.

``resnet50_fpn``: torchvision's FeaturePyramidNetwork on res2-res5 plus a max-pooled P6,
``MODEL.FPN.OUT_CHANNELS`` channels, strides 4, 8, 16, 32, 64. The RPN runs on P2-P6, regions
are sampled from P2-P5.

Stages for ``FREEZE_AT``: stem, res2, res3, res4 (, res5) — detectron2's numbering (2 = stem and
res2). ``MODEL.BACKBONE.NORM``: "" or "FrozenBN" (default), "BN", "GN".
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Dict

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

from .base import BACKBONE_REGISTRY, Backbone, norm_layer_factory
from .weights import load_backbone_weights

logger = logging.getLogger(__name__)


def _resnet50(cfg) -> nn.Module:
    norm = norm_layer_factory(cfg.MODEL.BACKBONE.NORM, default="FrozenBN")
    if norm is None:
        raise ValueError("resnet50 needs a normalisation layer")
    net = torchvision.models.resnet50(weights=None, norm_layer=norm)
    if cfg.MODEL.BACKBONE.WEIGHTS:
        load_backbone_weights(net, cfg.MODEL.BACKBONE.WEIGHTS)
    return net


class ResNetC4Backbone(Backbone):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([stem, net.layer1, net.layer2, net.layer3])
        self.out_features = ["res4"]
        self.out_channels = 1024
        self.strides = {"res4": 16}
        self.rpn_features = ["res4"]
        self.roi_features = ["res4"]
        self.size_divisibility = 16

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        for stage in self.stages:
            x = stage(x)
        return {"res4": x}


class ResNetFPNBackbone(Backbone):
    def __init__(self, net: nn.Module, out_channels: int = 256) -> None:
        super().__init__()
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([stem, net.layer1, net.layer2, net.layer3, net.layer4])
        self.fpn = FeaturePyramidNetwork([256, 512, 1024, 2048], out_channels)
        self.out_features = ["p2", "p3", "p4", "p5", "p6"]
        self.out_channels = int(out_channels)
        self.strides = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
        self.rpn_features = ["p2", "p3", "p4", "p5", "p6"]
        self.roi_features = ["p2", "p3", "p4", "p5"]
        self.size_divisibility = 32

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        x = self.stages[0](x)
        feats = OrderedDict()
        for i, stage in enumerate(self.stages[1:]):
            x = stage(x)
            feats[f"c{i + 2}"] = x
        outs = self.fpn(feats)  # same keys, finest first
        ret = {f"p{i + 2}": v for i, v in enumerate(outs.values())}
        ret["p6"] = F.max_pool2d(ret["p5"], kernel_size=1, stride=2)
        return ret


@BACKBONE_REGISTRY.register("resnet50_c4")
def build_resnet50_c4(cfg) -> Backbone:
    return ResNetC4Backbone(_resnet50(cfg))


@BACKBONE_REGISTRY.register("resnet50_fpn")
def build_resnet50_fpn(cfg) -> Backbone:
    return ResNetFPNBackbone(_resnet50(cfg), out_channels=cfg.MODEL.FPN.OUT_CHANNELS)
