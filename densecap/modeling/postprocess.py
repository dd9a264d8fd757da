"""Post-processing: the final detection selection.

* :func:`select_detections` (per image, input frame): score threshold, NMS on the refined boxes
  ranked by objectness, and a cap on the number kept; result sorted by score, descending.
* :func:`pair_unions` (per image): the union boxes of pairs of the best detections, the extra
  candidate regions of ``MODEL.ROI_HEADS.PAIR_BOXES`` (a region that shows two objects and their
  relation is annotated with the union of their boxes).

Boxes go back to original pixels in :meth:`densecap.modeling.transform.DenseCapTransform.postprocess`.

Shapes: P: candidate boxes, D: region code dim.
"""
from __future__ import annotations

import logging
from typing import Tuple

import torch
from torch import Tensor
from torchvision.ops import box_iou, nms

logger = logging.getLogger(__name__)

__all__ = ["select_detections", "pair_unions"]


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



def pair_unions(boxes: Tensor, top_n: int, *, same_object_iou: float = 0.5) -> Tuple[Tensor, Tensor]:
    """Union boxes (U, 4) xyxy of every pair among the first ``top_n`` of ``boxes`` (P, 4) xyxy
    (sorted best first), and the pairs (U, 2) as indices into ``boxes``; two boxes with IoU >
    ``same_object_iou`` are taken for one object and not paired. U <= top_n * (top_n - 1) / 2."""
    b = boxes[: max(0, int(top_n))]
    if b.shape[0] < 2:
        return boxes.new_zeros((0, 4)), torch.zeros((0, 2), dtype=torch.long, device=boxes.device)
    i, j = torch.triu_indices(b.shape[0], b.shape[0], offset=1, device=b.device)  # U, U
    apart = box_iou(b.float(), b.float())[i, j] <= same_object_iou
    i, j = i[apart], j[apart]
    union = torch.stack([torch.minimum(b[i, 0], b[j, 0]), torch.minimum(b[i, 1], b[j, 1]),
                         torch.maximum(b[i, 2], b[j, 2]), torch.maximum(b[i, 3], b[j, 3])], dim=1)
    return union, torch.stack([i, j], dim=1)
