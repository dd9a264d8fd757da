"""The bidirectional structured max-margin ranking loss (Karpathy & Fei-Fei 2015, eq. 3).

K: pairs in the batch. ``scores[k, l]`` is the score of region ``k`` with sentence ``l``; the
diagonal holds the true pairs.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["ranking_loss", "same_caption_mask"]


def same_caption_mask(captions: Tensor) -> Tensor:
    """``mask[k, l]`` is True when captions ``k`` and ``l`` are the same token sequence.

    captions: int64 (K, T), 0-padded. Several positives of one image often carry the caption of
    the same ground-truth box; such pairs are not negatives of each other.
    """
    return (captions[:, None, :] == captions[None, :, :]).all(dim=-1)  # K K


def ranking_loss(
    scores: Tensor,
    margin: float,
    *,
    positive_mask: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Bidirectional max-margin loss over a square score matrix.

    For every true pair ``k`` and every other index ``l`` that is not masked::

        max(0, S[k, l] - S[k, k] + margin)      # rank the sentences of region k
      + max(0, S[l, k] - S[k, k] + margin)      # rank the regions of sentence k

    Args:
        scores: float (K, K), rows regions, columns sentences, true pairs on the diagonal.
        margin: the hinge margin.
        positive_mask: bool (K, K), True where ``l`` must NOT count as a negative of ``k``
            (e.g. :func:`same_caption_mask`); the diagonal is always excluded.
        reduction: "sum" (the paper's objective) or "mean" (the sum divided by K).
    Returns:
        a scalar tensor.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square (K, K) matrix, got {tuple(scores.shape)}")
    k = scores.shape[0]
    if k == 0:
        return scores.sum()
    diag = scores.diagonal()  # K
    cost_sent = (scores - diag[:, None] + margin).clamp(min=0)  # K K: [k, l] region k vs sentence l
    cost_region = (scores - diag[None, :] + margin).clamp(min=0)  # K K: [l, k] region l vs sentence k
    excluded = torch.eye(k, dtype=torch.bool, device=scores.device)
    if positive_mask is not None:
        if positive_mask.shape != scores.shape:
            raise ValueError(f"positive_mask shape {tuple(positive_mask.shape)} != scores shape {tuple(scores.shape)}")
        excluded = excluded | positive_mask.to(torch.bool)
    cost_sent = cost_sent.masked_fill(excluded, 0.0)
    cost_region = cost_region.masked_fill(excluded, 0.0)
    total = cost_sent.sum() + cost_region.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / k
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
