"""Registry and builder of the whole-image caption heads (``MODEL.IMAGE_CAPTION.HEAD``)."""
from __future__ import annotations

import logging

import torch
from torch import nn

from densecap.data.tokenizer import SPECIAL_TOKENS, Vocabulary
from densecap.modeling.registry import Registry

from .base import ImageCaptionHead
from .nic import NICHead
from .sat import SATHead

logger = logging.getLogger(__name__)

IMAGE_CAPTION_HEAD_REGISTRY = Registry("IMAGE_CAPTION_HEAD")
IMAGE_CAPTION_HEAD_REGISTRY.__doc__ = """Whole-image caption heads: ``fn(cfg, vocab, in_channels) -> ImageCaptionHead``."""


def build_word_embedding(vocab: Vocabulary, embed_size: int, word_vectors: str = "", init_scale: float = 0.08) -> nn.Embedding:
    """Word embedding (V, E), uniform in [-init_scale, init_scale] (im2txt). With a GloVe/word2vec
    text file (the region LM's loader, ``language_model.load_word_vectors``), the rows of the words
    it holds are copied in; out-of-vocabulary words keep the random init (count logged)."""
    emb = nn.Embedding(len(vocab), int(embed_size))
    nn.init.uniform_(emb.weight, -init_scale, init_scale)
    if word_vectors:
        from densecap.modeling.language_model import load_word_vectors

        vecs, found = load_word_vectors(word_vectors, vocab, int(embed_size))
        with torch.no_grad():
            emb.weight[found] = vecs[found]
        words = [i for i, t in enumerate(vocab.idx_to_token) if t not in SPECIAL_TOKENS]
        oov = sum(1 for i in words if not bool(found[i]))
        emb.oov_count = oov  # reported by the builder's caller / tests
        logger.info("image caption word vectors from %s: %d of %d words found, %d OOV keep random init",
                    word_vectors, len(words) - oov, len(words), oov)
    return emb


def _embedding(cfg, vocab: Vocabulary) -> nn.Embedding:
    return build_word_embedding(vocab, cfg.MODEL.IMAGE_CAPTION.EMBED_SIZE, cfg.MODEL.CAPTION.WORD_VECTORS)


@IMAGE_CAPTION_HEAD_REGISTRY.register("nic")
def build_nic(cfg, vocab: Vocabulary, in_channels: int) -> ImageCaptionHead:
    c = cfg.MODEL.IMAGE_CAPTION
    return NICHead(
        vocab=vocab,
        embed=_embedding(cfg, vocab),
        in_channels=in_channels,
        hidden_size=c.HIDDEN_SIZE,
        dropout=c.DROPOUT,
        loss_weight=c.LOSS_WEIGHT,
    )


def _sat(cfg, vocab: Vocabulary, in_channels: int, hard: bool) -> ImageCaptionHead:
    c = cfg.MODEL.IMAGE_CAPTION
    return SATHead(
        vocab=vocab,
        embed=_embedding(cfg, vocab),
        in_channels=in_channels,
        hidden_size=c.HIDDEN_SIZE,
        attention_size=c.ATTENTION_SIZE,
        dropout=c.DROPOUT,
        hard=hard,
        doubly_stochastic_weight=c.DOUBLY_STOCHASTIC_WEIGHT,
        entropy_weight=c.ENTROPY_WEIGHT,
        baseline_decay=c.BASELINE_DECAY,
        hard_expectation_prob=c.HARD_EXPECTATION_PROB,
        pool_size=c.FEATURE_POOL_SIZE,
        loss_weight=c.LOSS_WEIGHT,
        attention_supervision_weight=c.ATTENTION_SUPERVISION_WEIGHT,
    )


@IMAGE_CAPTION_HEAD_REGISTRY.register("sat_soft")
def build_sat_soft(cfg, vocab: Vocabulary, in_channels: int) -> ImageCaptionHead:
    return _sat(cfg, vocab, in_channels, hard=False)


@IMAGE_CAPTION_HEAD_REGISTRY.register("sat_hard")
def build_sat_hard(cfg, vocab: Vocabulary, in_channels: int) -> ImageCaptionHead:
    return _sat(cfg, vocab, in_channels, hard=True)


def build_image_caption_head(cfg, vocab: Vocabulary, in_channels: int) -> ImageCaptionHead:
    """``MODEL.IMAGE_CAPTION.HEAD`` from the registry, on features with ``in_channels`` channels."""
    name = cfg.MODEL.IMAGE_CAPTION.HEAD
    try:
        fn = IMAGE_CAPTION_HEAD_REGISTRY.get(name)
    except KeyError:
        raise KeyError(
            f"MODEL.IMAGE_CAPTION.HEAD: unknown head '{name}' (known: {sorted(k for k, _ in IMAGE_CAPTION_HEAD_REGISTRY)})"
        ) from None
    return fn(cfg, vocab, int(in_channels))
