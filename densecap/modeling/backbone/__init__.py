"""Backbones: image (N, 3, H, W) -> named feature maps, registry ``BACKBONE_REGISTRY``.

Registered: ``vgg16`` (relu5_3, stride 16), ``resnet50_c4`` (res4, stride 16), ``resnet50_fpn``
(P2-P6, strides 4-64) and ``small_cnn`` (a fast CPU network for the synthetic configs,
stride 8 or 16).
"""
from .base import BACKBONE_REGISTRY, Backbone, build_backbone  # noqa: F401
from .weights import load_backbone_weights, resolve_weights  # noqa: F401
from . import resnet, small_cnn, vgg  # noqa: F401  (register)
