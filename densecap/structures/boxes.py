"""Box format conversions and geometry: the one place for them.

Formats
-------
* ``xywh``: ``[x, y, w, h]`` with ``(x, y)`` the top-left corner. This is the format of every
  interface users see (results.json, Visual Genome files, ``--boxes`` files, the evaluator).
* ``xyxy``: ``[x1, y1, x2, y2]`` corners, used inside the model (torchvision ops expect it).
* ``cxcywh``: centre and size, the parametrisation of anchor deltas.

All functions accept a ``torch.Tensor`` or a ``numpy.ndarray`` of shape (..., 4) and return the
same kind. Coordinates are continuous pixels: a box covering pixels 0..9 is ``[0, 0, 10, 10]``.
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np

try:  # torch is optional for the pure-numpy callers (data preparation, evaluation)
    import torch
except ImportError:  # pragma: no cover
    torch = None

ArrayLike = Union["torch.Tensor", np.ndarray]

# Deltas larger than this are clamped before exp(), as in torchvision / detectron2.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _stack(parts, like):
    if torch is not None and isinstance(like, torch.Tensor):
        return torch.stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def xywh_to_xyxy(boxes: ArrayLike) -> ArrayLike:
    x, y, w, h = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return _stack([x, y, x + w, y + h], boxes)


def xyxy_to_xywh(boxes: ArrayLike) -> ArrayLike:
    x1, y1, x2, y2 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return _stack([x1, y1, x2 - x1, y2 - y1], boxes)


def xyxy_to_cxcywh(boxes: ArrayLike) -> ArrayLike:
    x1, y1, x2, y2 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return _stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1], boxes)


def cxcywh_to_xyxy(boxes: ArrayLike) -> ArrayLike:
    cx, cy, w, h = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return _stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], boxes)


def clip_xyxy(boxes: ArrayLike, height: float, width: float) -> ArrayLike:
    """Clip ``xyxy`` boxes to an image of the given size."""
    if torch is not None and isinstance(boxes, torch.Tensor):
        x1 = boxes[..., 0].clamp(0, width)
        y1 = boxes[..., 1].clamp(0, height)
        x2 = boxes[..., 2].clamp(0, width)
        y2 = boxes[..., 3].clamp(0, height)
        return torch.stack([x1, y1, x2, y2], dim=-1)
    return np.stack(
        [
            np.clip(boxes[..., 0], 0, width),
            np.clip(boxes[..., 1], 0, height),
            np.clip(boxes[..., 2], 0, width),
            np.clip(boxes[..., 3], 0, height),
        ],
        axis=-1,
    )


def area_xyxy(boxes: ArrayLike) -> ArrayLike:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    if torch is not None and isinstance(boxes, torch.Tensor):
        return w.clamp(min=0) * h.clamp(min=0)
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def iou_xyxy_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Continuous IoU between two sets of ``xyxy`` boxes (numpy): (N,4) x (M,4) -> (N,M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # N M 2
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # N M 2
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_xyxy(a)[:, None] + area_xyxy(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def paired_iou_xyxy_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box i of ``a`` with box i of ``b`` (numpy ``xyxy``): (N,4), (N,4) -> (N,)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    wh = np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = area_xyxy(a) + area_xyxy(b) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def encode_deltas(anchors_xyxy: "torch.Tensor", target_xyxy: "torch.Tensor") -> "torch.Tensor":
    """Deltas (tx, ty, tw, th) that move ``anchors`` onto ``targets``.

    The original DenseCap parametrisation: x = xa + tx*wa, y = ya + ty*ha, w = wa*exp(tw),
    h = ha*exp(th), with (x, y) the box centre.
    """
    a = xyxy_to_cxcywh(anchors_xyxy)
    t = xyxy_to_cxcywh(target_xyxy)
    tx = (t[..., 0] - a[..., 0]) / a[..., 2]
    ty = (t[..., 1] - a[..., 1]) / a[..., 3]
    tw = torch.log(t[..., 2] / a[..., 2])
    th = torch.log(t[..., 3] / a[..., 3])
    return torch.stack([tx, ty, tw, th], dim=-1)


def apply_deltas(anchors_xyxy: "torch.Tensor", deltas: "torch.Tensor") -> "torch.Tensor":
    """Inverse of :func:`encode_deltas`; differentiable in both arguments."""
    a = xyxy_to_cxcywh(anchors_xyxy)
    cx = a[..., 0] + deltas[..., 0] * a[..., 2]
    cy = a[..., 1] + deltas[..., 1] * a[..., 3]
    w = a[..., 2] * torch.exp(deltas[..., 2].clamp(max=BBOX_XFORM_CLIP))
    h = a[..., 3] * torch.exp(deltas[..., 3].clamp(max=BBOX_XFORM_CLIP))
    return cxcywh_to_xyxy(torch.stack([cx, cy, w, h], dim=-1))
