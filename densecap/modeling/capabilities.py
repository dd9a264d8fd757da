"""What a model produces: callers ask ``capabilities(model)`` instead of checking class names.

Every model class declares a ``capabilities`` attribute (a frozenset of the names below), and a
classmethod ``capabilities_from_config(cfg)`` saying what the model built from ``cfg`` will
produce (for decisions made before a model exists, such as which dataset to load).

    regions            eval outputs carry ``instances`` (boxes, scores, region captions; the
                       contract of :class:`~densecap.modeling.meta_arch.DenseCapModel`)
    image_caption      eval outputs carry ``image_caption``, ``image_caption_logprob``,
                       ``image_captions``
    attention_maps     eval outputs carry ``attention`` (per word of the best whole-image caption)
                       and ``attention_cell``; ``model.image_caption_attention(inputs)`` gives the
                       attention over the inputs' reference captions
    region_embeddings  ``model.embedding_head`` embeds region codes and sentences in one space
                       (fast region retrieval)
"""
from __future__ import annotations

from typing import FrozenSet

REGIONS = "regions"
IMAGE_CAPTION = "image_caption"
ATTENTION_MAPS = "attention_maps"
REGION_EMBEDDINGS = "region_embeddings"
ALL_CAPABILITIES = frozenset({REGIONS, IMAGE_CAPTION, ATTENTION_MAPS, REGION_EMBEDDINGS})

__all__ = ["REGIONS", "IMAGE_CAPTION", "ATTENTION_MAPS", "REGION_EMBEDDINGS", "ALL_CAPABILITIES",
           "capabilities", "capabilities_from_config", "image_caption_capabilities"]


def capabilities(model) -> FrozenSet[str]:
    """The capabilities ``model`` declares (DDP-wrapped or not); empty when it declares none."""
    m = getattr(model, "module", model)
    return frozenset(getattr(m, "capabilities", ()) or ())


def image_caption_capabilities(head) -> FrozenSet[str]:
    """What a whole-image caption head adds: ``image_caption``, and ``attention_maps`` when it attends."""
    if head is None:
        return frozenset()
    return frozenset({IMAGE_CAPTION} | ({ATTENTION_MAPS} if getattr(head, "has_attention", False) else set()))


def capabilities_from_config(cfg) -> FrozenSet[str]:
    """What the model ``MODEL.META_ARCHITECTURE`` builds from ``cfg`` will produce."""
    from . import META_ARCH_REGISTRY  # the registry with every architecture registered

    return frozenset(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE).capabilities_from_config(cfg))
