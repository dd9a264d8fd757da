"""Post-processing: the final detection selection and the user-facing output format.

* :func:`select_detections` (per image, input frame): score threshold, NMS on the refined boxes
  ranked by objectness, and a cap on the number kept; result sorted by score, descending.
* :func:`to_original_frame`: xyxy boxes of the resized input -> ``[x, y, w, h]`` in ORIGINAL image
  pixels (divided by the input's ``scale``, clipped to ``(width, height)``).

Shapes: P: candidate boxes, D: region code dim.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor
from torchvision.ops import nms

from densecap.structures import clip_xyxy, xyxy_to_xywh

logger = logging.getLogger(__name__)

__all__ = ["select_detections", "to_original_frame"]


def select_detections(
    boxes: Tensor, scores: Tensor, *, nms_thresh: float, score_thresh: float = 0.0, max_detections: int = 0
) -> Tensor:
    """Indices of the kept boxes, best score first.

    boxes: (P, 4) xyxy; scores: (P,) in [0, 1]; ``nms_thresh >= 1`` disables NMS;
    ``max_detections = 0`` keeps all.
    """
    idx = torch.nonzero(scores >= score_thresh).flatten()  # P'
    if idx.numel() == 0:
        return idx
    if nms_thresh < 1.0:
        keep = nms(boxes[idx].float(), scores[idx].float(), float(nms_thresh))  # sorted by score
    else:
        keep = torch.sort(scores[idx], descending=True, stable=True).indices
    idx = idx[keep]
    if max_detections > 0:
        idx = idx[:max_detections]
    return idx


def to_original_frame(boxes_xyxy: Tensor, scale: float, height: int, width: int) -> Tensor:
    """Input-frame xyxy (P, 4) -> float32 [x, y, w, h] (P, 4) in original-image pixels."""
    b = boxes_xyxy.detach().float() / float(scale)
    b = clip_xyxy(b, float(height), float(width))
    return xyxy_to_xywh(b).to(torch.float32)
