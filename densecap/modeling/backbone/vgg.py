"""VGG-16 up to relu5_3 (512 channels, stride 16), the original DenseCap CNN.

Stages for ``FREEZE_AT`` are the five conv blocks (conv1 ... conv5); the original never trains
conv1-conv2 (``FREEZE_AT: 2``). ``MODEL.BACKBONE.NORM``: "" (plain VGG-16) or "BN" (VGG-16-BN).
"""
from __future__ import annotations

import logging
from typing import Dict

import torchvision
from torch import Tensor, nn

from .base import BACKBONE_REGISTRY, Backbone
from .weights import load_backbone_weights

logger = logging.getLogger(__name__)


class VGG16Backbone(Backbone):
    def __init__(self, *, batch_norm: bool = False, weights: str = "") -> None:
        super().__init__()
        net = torchvision.models.vgg16_bn(weights=None) if batch_norm else torchvision.models.vgg16(weights=None)
        if weights:
            load_backbone_weights(net, weights)
        # split features into the five conv blocks at the max-pools; drop pool5
        stages, cur = [], []
        for layer in net.features:
            if isinstance(layer, nn.MaxPool2d):
                if len(stages) < 4:  # pool1-pool4 end their block; pool5 is dropped
                    cur.append(layer)
                stages.append(nn.Sequential(*cur))
                cur = []
                continue
            cur.append(layer)
        self.stages = nn.ModuleList(stages)
        # the pretrained fc6/fc7 can initialise the recognition network (7x7x512 -> 4096 -> 4096)
        self._fc_init = {
            "fc6.weight": net.classifier[0].weight.detach().clone(),
            "fc6.bias": net.classifier[0].bias.detach().clone(),
            "fc7.weight": net.classifier[3].weight.detach().clone(),
            "fc7.bias": net.classifier[3].bias.detach().clone(),
        } if weights else None
        self.out_features = ["conv5"]
        self.out_channels = 512
        self.strides = {"conv5": 16}
        self.rpn_features = ["conv5"]
        self.roi_features = ["conv5"]
        self.size_divisibility = 16

    def pop_recognition_init(self):
        """Pretrained fc6/fc7 tensors for the recognition network (or None), handed over once."""
        init, self._fc_init = self._fc_init, None
        return init

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        for stage in self.stages:
            x = stage(x)
        return {"conv5": x}


@BACKBONE_REGISTRY.register("vgg16")
def build_vgg16(cfg) -> Backbone:
    norm = cfg.MODEL.BACKBONE.NORM
    if norm not in ("", "BN"):
        raise ValueError(f"vgg16 supports MODEL.BACKBONE.NORM '' or 'BN', got {norm!r}")
    return VGG16Backbone(batch_norm=norm == "BN", weights=cfg.MODEL.BACKBONE.WEIGHTS)
