"""Loss functions of the model, as pure functions (no module state, no weights applied here).

Every function returns a scalar tensor that stays connected to its inputs even when there is
nothing to average over (an image with no positives gives an exact 0 that still backpropagates),
so callers never special-case empty batches.

Shapes: P: positive boxes, S: sampled boxes, N: captions, T: caption tokens, V: vocabulary.
"""
from __future__ import annotations

import logging

import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["objectness_loss", "box_regression_loss", "delta_l2_loss", "caption_loss"]


def _zero_like_graph(x: Tensor) -> Tensor:
    """An exact scalar 0 connected to ``x``'s graph."""
    return x.sum() * 0.0


def objectness_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy on objectness logits, mean over sampled boxes.

    logits: float (S,); labels: (S,) 1 = positive, 0 = negative.
    """
    if logits.numel() == 0:
        return _zero_like_graph(logits)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="mean")


def box_regression_loss(pred_deltas: Tensor, target_deltas: Tensor, beta: float = 1.0) -> Tensor:
    """Smooth-L1 between predicted and target deltas, mean over the P*4 elements.

    The original's ``nn.SmoothL1Criterion`` (size-averaged); gradients flow into both arguments
    (the original lets the final box loss reach the RPN boxes through the targets).
    pred_deltas, target_deltas: float (P, 4).
    """
    if pred_deltas.numel() == 0:
        return _zero_like_graph(pred_deltas) + _zero_like_graph(target_deltas)
    if beta <= 0:
        return F.l1_loss(pred_deltas, target_deltas, reduction="mean")
    return F.smooth_l1_loss(pred_deltas, target_deltas, beta=beta, reduction="mean")


def delta_l2_loss(deltas: Tensor, num_images: int) -> Tensor:
    """The original's L2 pull on every RPN delta: 0.5 * sum(deltas**2) per image.

    deltas: float (..., 4), all anchors of the batch.
    """
    return 0.5 * (deltas * deltas).sum() / max(int(num_images), 1)


def caption_loss(logits: Tensor, targets: Tensor, pad_token: int = 0) -> Tensor:
    """Token cross-entropy summed over non-pad targets (END included), divided by N captions.

    logits: float (N, T, V) teacher-forced predictions; targets: int64 (N, T), pad = ignored.
    """
    n = int(logits.shape[0])
    if n == 0 or logits.numel() == 0:
        return _zero_like_graph(logits)
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_token, reduction="sum"
    )
    return ce / n
