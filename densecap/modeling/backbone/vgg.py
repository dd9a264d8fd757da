"""VGG-16 up to relu5_3 (512 channels, stride 16), the original DenseCap CNN.

Stages for ``FREEZE_AT`` are the five conv blocks (conv1 ... conv5); the original never trains
conv1-conv2 (``FREEZE_AT: 2``). ``MODEL.BACKBONE.NORM``: "" (plain VGG-16) or "BN" (VGG-16-BN).
With pretrained weights, the file's fc6/fc7 (classifier.0 / classifier.3) are handed to the
recognition network (7x7x512 -> 4096 -> 4096) when its shape matches, as in the original.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from .base import BACKBONE_REGISTRY, Backbone
from .weights import load_backbone_weights, resolve_weights

logger = logging.getLogger(__name__)


class VGG16Backbone(Backbone):
    def __init__(self, *, batch_norm: bool = False, weights: str = "") -> None:
        super().__init__()
        features = make_layers(cfgs["D"], batch_norm=batch_norm)  # torchvision's vgg16(_bn).features
        for m in features.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self._fc_init: Optional[Dict[str, Tensor]] = None
        if weights:
            state = load_backbone_weights(features, resolve_weights(weights), prefix="features.")
            keys = {"fc6.weight": "classifier.0.weight", "fc6.bias": "classifier.0.bias",
                    "fc7.weight": "classifier.3.weight", "fc7.bias": "classifier.3.bias"}
            if all(v in state for v in keys.values()):
                self._fc_init = {k: state[v] for k, v in keys.items()}
        # split into the five conv blocks at the max-pools; pool5 is dropped
        stages, cur = [], []
        for layer in features:
            if isinstance(layer, nn.MaxPool2d):
                if len(stages) < 4:  # pool1-pool4 end their block
                    cur.append(layer)
                stages.append(nn.Sequential(*cur))
                cur = []
                continue
            cur.append(layer)
        self.stages = nn.ModuleList(stages)
        self.out_features = ["conv5"]
        self.out_channels = 512
        self.strides = {"conv5": 16}
        self.rpn_features = ["conv5"]
        self.roi_features = ["conv5"]
        self.size_divisibility = 16

    def pop_recognition_init(self) -> Optional[Dict[str, Tensor]]:
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
