"""Post-processing: the final detection selection.

* :func:`select_detections` (per image, input frame): score threshold, NMS on the refined boxes
  ranked by objectness, and a cap on the number kept; result sorted by score, descending.

Boxes go back to original pixels in :meth:`densecap.modeling.transform.DenseCapTransform.postprocess`.

Shapes: P: candidate boxes, D: region code dim.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor
from torchvision.ops import nms

logger = logging.getLogger(__name__)

__all__ = ["select_detections"]


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

