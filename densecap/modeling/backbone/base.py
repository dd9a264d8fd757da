"""Backbone interface, registry and freezing.

Shapes: N: images, C: channels, H, W: input size.
"""
from __future__ import annotations

import logging
from typing import Dict, List

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..registry import Registry

logger = logging.getLogger(__name__)

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """Backbones, called as ``fn(cfg) -> Backbone`` (``MODEL.BACKBONE.NAME``)."""


class Backbone(nn.Module):
    """Base class: ``forward(images N 3 H W) -> {name: (N, C, H/s, W/s)}``.

    Attributes set by subclasses:
        out_features      names returned by forward, finest first
        out_channels      channels of every returned map (the same for all)
        strides           {name: stride in input pixels}
        rpn_features      names the RPN runs on
        roi_features      names the region sampler reads (finest first, consecutive strides)
        size_divisibility the padded input size must be a multiple of this
        stages            list of modules, the unit of ``MODEL.BACKBONE.FREEZE_AT``
    """

    out_features: List[str]
    out_channels: int
    strides: Dict[str, int]
    rpn_features: List[str]
    roi_features: List[str]
    size_divisibility: int = 1

    def stages_for_freezing(self) -> List[nn.Module]:
        return list(getattr(self, "stages", []))

    def freeze(self, freeze_at: int) -> None:
        """Freeze the first ``freeze_at`` stages: no gradients, BatchNorm made frozen."""
        stages = self.stages_for_freezing()
        if freeze_at > len(stages):
            raise ValueError(f"FREEZE_AT={freeze_at} but the backbone has {len(stages)} stages")
        for stage in stages[:freeze_at]:
            for p in stage.parameters():
                p.requires_grad_(False)
            _freeze_batchnorm(stage)
        if freeze_at > 0:
            logger.info("froze %d of %d backbone stages", freeze_at, len(stages))


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace BatchNorm2d children by FrozenBatchNorm2d with the same statistics (in place)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                if child.affine:
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
                if child.running_mean is not None:
                    frozen.running_mean.copy_(child.running_mean)
                    frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


def build_backbone(cfg) -> Backbone:
    """Build ``MODEL.BACKBONE.NAME``, load ``MODEL.BACKBONE.WEIGHTS`` and apply ``FREEZE_AT``.

    ``FREEZE_AT`` applies only to initialised (pretrained) weights, from ``MODEL.BACKBONE.WEIGHTS``
    or from a full checkpoint ``MODEL.WEIGHTS`` (fine-tuning): freezing randomly initialised layers
    never helps, so with both empty every layer trains (logged).
    """
    name = cfg.MODEL.BACKBONE.NAME
    backbone = BACKBONE_REGISTRY.get(name)(cfg)
    assert isinstance(backbone, Backbone), f"{name} must return a Backbone"
    freeze_at = int(cfg.MODEL.BACKBONE.FREEZE_AT)
    if cfg.MODEL.BACKBONE.WEIGHTS or cfg.MODEL.WEIGHTS:
        backbone.freeze(freeze_at)
    elif freeze_at > 0:
        logger.info("MODEL.BACKBONE.WEIGHTS and MODEL.WEIGHTS are empty: random initialisation, FREEZE_AT=%d ignored",
                    freeze_at)
    return backbone


def norm_layer_factory(norm: str, default: str):
    """``nn.Module`` constructor for a normalisation name ("" = ``default``)."""
    norm = norm or default
    if norm == "BN":
        return nn.BatchNorm2d
    if norm == "FrozenBN":
        return FrozenBatchNorm2d
    if norm == "GN":
        return lambda c: nn.GroupNorm(_num_groups(c), c)
    if norm == "none":
        return None
    raise ValueError(f"unsupported MODEL.BACKBONE.NORM {norm!r} (use '', 'BN', 'FrozenBN', 'GN')")


def _num_groups(c: int) -> int:
    """Up to 32 groups of at least 4 channels."""
    for g in (32, 16, 8, 4, 2):
        if c % g == 0 and c // g >= 4:
            return g
    return 1
