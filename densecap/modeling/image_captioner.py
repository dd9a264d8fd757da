"""``ImageCaptioner``: a standalone whole-image captioner = backbone + image-caption head.

Shapes: B: images, K: captions per image, T: caption tokens, C: channels, H, W: feature grid,
N: captions returned per image.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from densecap.data.tokenizer import Vocabulary

from .backbone import Backbone, build_backbone
from .capabilities import ATTENTION_MAPS, IMAGE_CAPTION, image_caption_capabilities
from .image_caption import ImageCaptionHead, build_image_caption_head
from .image_caption.attach import caption_outputs, feature_valid_mask, pick_feature, training_captions
from .meta_arch import META_ARCH_REGISTRY, DenseCapModel
from .transform import DenseCapTransform

logger = logging.getLogger(__name__)

__all__ = ["ImageCaptioner", "pick_feature", "feature_valid_mask"]


@META_ARCH_REGISTRY.register("ImageCaptioner")
class ImageCaptioner(nn.Module):
    """Backbone + whole-image caption head (NIC, soft or hard attention).

    Input, a list of per-image dicts (``densecap.data.captions.CaptionDataset`` items)::

        image           uint8 (3, H, W) RGB (already resized)
        image_captions  int64 (K, T) word ids, 0-padded, no START/END (training only)
        image_id        int (optional, echoed back)

    Training (``model.train()``): ``model(batched_inputs) -> {"loss_image_caption": ..., ...}``
    (weighted losses; the head's extras: ``loss_image_caption_doubly_stochastic``,
    ``loss_image_caption_reinforce``, ``loss_image_caption_entropy``). Each step uses one of an
    image's K captions drawn at random (``MODEL.IMAGE_CAPTION.TRAIN_CAPTIONS = "sample"``) or all
    K (``"all"``).

    Evaluation (``model.eval()``): a list with one dict per image::

        image_caption          str    the best caption (words joined by spaces)
        image_caption_logprob  float  its total log-probability (END included when it finished)
        image_captions         [{"caption": str, "logprob": float}] the top N (N = num_captions)
        attention              float (T, h, w) the attention map behind each word of the best
                               caption (T = its number of words; h, w: the attention grid), or
                               None for NIC
        attention_cell         (cell_h, cell_w): input (resized-image) pixels covered by one
                               attention cell, the grid starting at the top-left; None for NIC
        image_id               the input's image_id (None if absent)

    Decoding options (set from ``MODEL.IMAGE_CAPTION`` at build time, changeable as attributes;
    named apart from the region captioner's ``beam_size``, which follows TEST.BEAM_SIZE):
    ``caption_beam_size``, ``caption_max_len`` (words, END not counted), ``num_captions``,
    ``length_penalty``, ``block_repeats``.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        head: ImageCaptionHead,
        vocab: Vocabulary,
        pixel_mean: List[float],
        pixel_std: List[float],
        train_captions: str = "sample",
        beam_size: int = 3,
        max_len: int = 20,
        num_captions: int = 1,
        length_penalty: float = 0.0,
        block_repeats: bool = False,
        transform: Optional[DenseCapTransform] = None,
    ) -> None:
        super().__init__()
        if train_captions not in ("sample", "all"):
            raise ValueError(f"MODEL.IMAGE_CAPTION.TRAIN_CAPTIONS must be 'sample' or 'all', got {train_captions!r}")
        self.backbone = backbone
        self.head = head
        self.vocab = vocab
        self.in_feature = pick_feature(backbone)
        self.transform = transform if transform is not None else DenseCapTransform(
            pixel_mean=pixel_mean, pixel_std=pixel_std, size_divisibility=backbone.size_divisibility)
        self.train_captions = train_captions
        self.caption_beam_size = int(beam_size)
        self.caption_max_len = int(max_len)
        self.num_captions = int(num_captions)
        self.length_penalty = float(length_penalty)
        self.block_repeats = block_repeats

    @property
    def capabilities(self) -> frozenset:
        """``image_caption``, and ``attention_maps`` for an attention head (see
        :mod:`densecap.modeling.capabilities`)."""
        return image_caption_capabilities(self.head)

    @classmethod
    def capabilities_from_config(cls, cfg) -> frozenset:
        return frozenset({IMAGE_CAPTION} | ({ATTENTION_MAPS} if cfg.MODEL.IMAGE_CAPTION.HEAD != "nic" else set()))

    @classmethod
    def from_config(cls, cfg, vocab: Vocabulary) -> "ImageCaptioner":
        backbone = build_backbone(cfg)
        c = cfg.MODEL.IMAGE_CAPTION
        return cls(
            backbone=backbone,
            head=build_image_caption_head(cfg, vocab, backbone.out_channels),
            vocab=vocab,
            pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
            pixel_std=list(cfg.MODEL.PIXEL_STD),
            train_captions=c.TRAIN_CAPTIONS,
            beam_size=c.BEAM_SIZE,
            max_len=c.MAX_TOKENS,
            num_captions=c.NUM_CAPTIONS,
            length_penalty=c.LENGTH_PENALTY,
            block_repeats=c.BLOCK_REPEATS,
            transform=DenseCapTransform.from_config(cfg, size_divisibility=backbone.size_divisibility),
        )

    @property
    def device(self) -> torch.device:
        return self.transform.device

    # the DenseCap model's transform: resize (predictor), normalise and pad
    pixel_mean = DenseCapModel.pixel_mean
    pixel_std = DenseCapModel.pixel_std
    resize_image = DenseCapModel.resize_image
    preprocess_image = DenseCapModel.preprocess_image

    def extract_features(self, batched_inputs: List[Dict]) -> Tuple[Tensor, Tensor]:
        """Backbone features (B, C, H, W) and their valid mask (B, H, W) bool."""
        images, sizes = self.preprocess_image(batched_inputs)
        sizes = torch.tensor(sizes, dtype=torch.long).reshape(-1, 2)
        trainable = self.training and any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            feats = self.backbone(images)[self.in_feature]  # B C H W
        mask = feature_valid_mask(sizes, self.backbone.strides[self.in_feature], feats.shape[-2:]).to(feats.device)
        return feats, mask

    def forward(self, batched_inputs: List[Dict]):
        feats, mask = self.extract_features(batched_inputs)
        if not self.training:
            return self.inference(feats, mask, batched_inputs)
        caps = [d["image_captions"].to(feats.device) for d in batched_inputs]
        feats, mask, captions, _ = training_captions(feats, mask, caps, self.train_captions)
        return self.head(feats, captions, mask)

    @torch.no_grad()
    def inference(self, feats: Tensor, mask: Tensor, batched_inputs: List[Dict]) -> List[Dict]:
        results = caption_outputs(
            self.head, self.vocab, feats, mask, float(self.backbone.strides[self.in_feature]),
            beam_size=self.caption_beam_size, max_len=self.caption_max_len, num_captions=self.num_captions,
            length_penalty=self.length_penalty, block_repeats=self.block_repeats,
        )
        for r, d in zip(results, batched_inputs):
            r["image_id"] = d.get("image_id")
        return results
