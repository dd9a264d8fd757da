"""Joint inference (``MODEL.ROI_HEADS.JOINT_INFERENCE``): the caption refines the box.

After Yang et al., "Dense Captioning with Joint Inference and Visual Context" (CVPR 2017): the
language model's state after reading a region's caption also predicts where the region is. Here a
linear layer (zero-initialised, so a fresh head changes nothing) maps the caption decoder's final
hidden state (:meth:`~densecap.modeling.language_model.CaptionDecoder.final_hidden`, the state that
predicts END) to box deltas applied on top of the recognition network's refined box:

* training: for every RPN positive, the state after its ground-truth caption (teacher forcing);
  ``loss_box_joint`` = smooth-L1 between those deltas and the deltas that move the (detached)
  refined box onto its ground truth, weighted like ``loss_box`` (``MODEL.ROI.LOSS_WEIGHT_BOX``,
  ``SMOOTH_L1_BETA``); its gradient reaches the caption decoder and, through the region code, the
  recognition network and the backbone;
* test: each detection is captioned first, then its box moves by the deltas predicted from the
  state after its generated caption (the final NMS and the scores stay those of the
  recognition network; user-given boxes are never moved).

Shapes: P: positives / detections, H: decoder hidden size.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from densecap.structures import apply_deltas, clip_xyxy, encode_deltas

from .losses import box_regression_loss

__all__ = ["JointBoxRefiner"]


class JointBoxRefiner(nn.Module):
    def __init__(self, *, hidden_size: int, loss_weight: float = 0.1, smooth_l1_beta: float = 1.0) -> None:
        super().__init__()
        self.deltas = nn.Linear(int(hidden_size), 4)
        nn.init.zeros_(self.deltas.weight)
        nn.init.zeros_(self.deltas.bias)
        self.loss_weight = float(loss_weight)
        self.smooth_l1_beta = float(smooth_l1_beta)

    def loss(self, hidden: Tensor, refined: Tensor, gt: Tensor) -> Tensor:
        """hidden (P, H); refined, gt (P, 4) xyxy -> weighted scalar smooth-L1."""
        target = encode_deltas(refined.detach(), gt.to(refined.dtype))  # P 4
        return self.loss_weight * box_regression_loss(self.deltas(hidden), target, self.smooth_l1_beta)

    def refine(self, hidden: Tensor, boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
        """hidden (P, H), boxes (P, 4) xyxy in an image of ``image_size`` (h, w) -> moved boxes (P, 4)."""
        if boxes.shape[0] == 0:
            return boxes
        h, w = image_size
        return clip_xyxy(apply_deltas(boxes, self.deltas(hidden).to(boxes.dtype)), h, w)
