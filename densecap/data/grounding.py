"""Which feature cells lie in the ground-truth regions that name a word: the one definition used
by the region-supervised attention loss (``densecap.modeling.image_caption``) and by the attention
grounding evaluator (``densecap.evaluation.attention_grounding``).

Shapes: G: ground-truth regions, K: captions, T / Tr: caption tokens, H, W: a feature grid.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import Tensor

from .tokenizer import NUM_SPECIAL

__all__ = ["cell_centres_in_boxes", "grounded_words"]


def cell_centres_in_boxes(boxes: Tensor, stride: Union[float, Tuple[float, float]], shape: Tuple[int, int]) -> Tensor:
    """(G, H, W) bool: which cells of an (H, W) grid with cells of ``stride`` pixels (one number,
    or (cell_h, cell_w)), starting at the top-left, have their centre inside each xyxy box (G, 4)."""
    sy, sx = (float(stride), float(stride)) if isinstance(stride, (int, float)) else (float(stride[0]), float(stride[1]))
    H, W = shape
    b = boxes.float().reshape(-1, 4)
    cy = (torch.arange(H, device=b.device, dtype=torch.float32) + 0.5) * sy  # H
    cx = (torch.arange(W, device=b.device, dtype=torch.float32) + 0.5) * sx  # W
    return ((cy[None, :, None] >= b[:, 1, None, None]) & (cy[None, :, None] < b[:, 3, None, None])
            & (cx[None, None, :] >= b[:, 0, None, None]) & (cx[None, None, :] < b[:, 2, None, None]))  # G H W


def grounded_words(captions: Tensor, gt_captions: Tensor) -> Tuple[Tensor, Tensor]:
    """Which region captions name each caption word. captions (K, T) and gt_captions (G, Tr) word
    ids -> ``contains`` (K, T, G) bool and ``grounded`` (K, T) bool: some, but not all, of the
    regions' captions contain the word ("a" is in all of them; "background" in none), and it is not
    a special token."""
    contains = (captions[:, :, None, None] == gt_captions[None, None, :, :]).any(-1)  # K T G
    grounded = contains.any(-1) & ~contains.all(-1) & (captions >= NUM_SPECIAL)  # K T
    return contains, grounded
