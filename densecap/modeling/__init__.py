"""The dense captioning model (FCLN) and its parts.

``build_model(cfg, vocab)`` builds ``MODEL.META_ARCHITECTURE`` on ``MODEL.DEVICE``; see
:class:`DenseCapModel` for the input/output contract.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from densecap.data.tokenizer import Vocabulary

from .backbone import BACKBONE_REGISTRY, Backbone, build_backbone  # noqa: F401
from .decoding import BeamSearchOutput, beam_search  # noqa: F401
from .language_model import CAPTION_DECODER_REGISTRY, CaptionDecoder, build_caption_decoder  # noqa: F401
from .meta_arch import META_ARCH_REGISTRY, DenseCapModel  # noqa: F401

logger = logging.getLogger(__name__)


def build_model(cfg, vocab: Vocabulary) -> nn.Module:
    """The model named by ``MODEL.META_ARCHITECTURE``, on ``MODEL.DEVICE``, with ``model.vocab``."""
    cls = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    model = cls.from_config(cfg, vocab) if hasattr(cls, "from_config") else cls(cfg, vocab)
    model.to(torch.device(cfg.MODEL.DEVICE))
    n = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("built %s: %.2fM parameters (%.2fM trainable)", cfg.MODEL.META_ARCHITECTURE, n / 1e6, n_train / 1e6)
    return model
from . import image_captioner  # noqa: F401,E402  (registers META_ARCHITECTURE "ImageCaptioner")
from . import original  # noqa: F401,E402  (registers META_ARCHITECTURE "DenseCapOriginal", backbone "vgg16_original")
