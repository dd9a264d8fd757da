"""The localization layer's feature sampler: boxes -> fixed-size S x S feature grids.

Coordinate convention (all samplers here)
-----------------------------------------
Boxes are ``[x1, y1, x2, y2]`` in continuous pixels of the (resized, padded) network input:
pixel ``k`` covers ``[k, k+1)``. A feature map of stride ``s`` with ``W`` columns covers
``[0, s*W)``; its cell ``j`` has its centre at pixel ``(j + 0.5) * s``. A pixel coordinate ``x``
therefore sits at the fractional cell index ``u = x / s - 0.5`` (integers = cell centres), which is
``grid_sample``'s ``align_corners=False`` normalised coordinate ``g = 2 * x / (s * W) - 1``.

Bilinear sampler (the project's; modelled on the original's BilinearRoiPooling)
-------------------------------------------------------------------------------
An S x S grid of points evenly spaced from edge to edge of the box, corners included:
``x_k = x1 + k * (x2 - x1) / (S - 1)`` for ``k = 0 .. S-1`` (the centre when ``S == 1``), same for
``y``; each point reads the bilinear interpolation of its four neighbouring cells, a neighbour
outside the map reading 0 (``padding_mode="zeros"``). The output is differentiable with respect to
the features *and* the box coordinates (``grid_sample`` backpropagates into the grid).

This is the original's idea (a bilinear grid over the box, gradients into the box) in this
module's exact stride geometry; it is **not** the original's numbers. The original
(``BoxToAffine`` + stnbhwd's ``AffineGridGeneratorBHWD`` / ``BilinearSamplerBHWD``, reproduced in
``densecap.modeling.original.ops.bilinear_roi_pooling``) normalises a box (xc, yc, w, h) in
1-based pixels of a W-wide image to the centre ``(2 xc - W - 1) / (W - 1)`` and half-width
``w / W``, and reads the feature map with ``align_corners=True``: image pixel 1 lands on the
centre of feature column 0 and pixel W on the centre of the last column, whatever the stride and
the rounding of the feature map size (``ceil(W / 16)`` columns). Inside the image the two differ
by a fraction of a cell; at the borders they differ by up to about half a cell, and the original's
box extent is ``w * (W - 1) / W`` rather than ``w`` pixels. The original-compatible model
(``MODEL.META_ARCHITECTURE: "DenseCapOriginal"``) uses the original's sampler at inference.

``roi_align`` uses ``torchvision.ops.roi_align`` (aligned=True, same pixel convention, bins
averaged, no gradient to the boxes) for comparison.

With several feature levels (FPN) each box reads the level ``k = floor(k0 + log2(sqrt(w*h) /
224))`` clamped to the available levels, ``k0 = 4`` (the FPN paper's rule).

Shapes: N: images, C: channels, H, W: feature map size, K: boxes, S: output size.
"""
from __future__ import annotations

import logging
import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

logger = logging.getLogger(__name__)

__all__ = ["bilinear_sample_boxes", "assign_boxes_to_levels", "ROIPooler"]


def _box_grid(boxes: Tensor, output_size: int, stride: float, height: int, width: int) -> Tensor:
    """Normalised ``grid_sample`` coordinates of the S x S points of each box: (K, S, S, 2)."""
    S = int(output_size)
    if S == 1:
        t = boxes.new_full((1,), 0.5)
    else:
        t = torch.linspace(0.0, 1.0, S, dtype=boxes.dtype, device=boxes.device)  # S
    x1, y1, x2, y2 = boxes.unbind(dim=1)  # K each
    xs = x1[:, None] + (x2 - x1)[:, None] * t[None, :]  # K S
    ys = y1[:, None] + (y2 - y1)[:, None] * t[None, :]  # K S
    gx = xs * (2.0 / (stride * width)) - 1.0  # K S
    gy = ys * (2.0 / (stride * height)) - 1.0  # K S
    K = boxes.shape[0]
    grid = torch.stack([gx[:, None, :].expand(K, S, S), gy[:, :, None].expand(K, S, S)], dim=-1)  # K S S 2
    return grid


def bilinear_sample_boxes(
    features: Tensor, box_lists: Sequence[Tensor], stride: float, output_size: int
) -> Tensor:
    """Sample an S x S grid over every box (see the module docstring for the convention).

    Args:
        features: (N, C, H, W) one feature map of stride ``stride``.
        box_lists: N tensors (K_i, 4) xyxy in input pixels, one per image.
        stride: input pixels per feature cell.
        output_size: S.
    Returns:
        (sum K_i, C, S, S), boxes in the order of ``box_lists``.
    """
    N, C, H, W = features.shape
    S = int(output_size)
    outs: List[Tensor] = []
    for i, boxes in enumerate(box_lists):
        k = int(boxes.shape[0])
        if k == 0:
            outs.append(features.new_zeros((0, C, S, S)))
            continue
        grid = _box_grid(boxes.to(features.dtype), S, stride, H, W)  # K S S 2
        grid = grid.reshape(1, k * S, S, 2)
        feat = features[i : i + 1]
        if feat.device.type == "cpu" and not torch.is_grad_enabled():
            # at test time on the CPU: grid_sample reads NHWC maps 2-5x faster, same values bit for bit
            feat = feat.contiguous(memory_format=torch.channels_last)
        out = F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # 1 C KS S
        if out.is_contiguous():
            outs.append(out.reshape(C, k, S, S).transpose(0, 1))  # K C S S (a view)
        else:  # NHWC in, NHWC out: (1, KS, S, C) in memory
            outs.append(out.permute(0, 2, 3, 1).reshape(k, S, S, C).permute(0, 3, 1, 2))  # K C S S (a view)
    if not outs:
        return features.new_zeros((0, C, S, S))
    if len(outs) == 1:  # one image (e.g. each FPN level at test time): no concatenation copy
        return outs[0]
    return torch.cat(outs, dim=0)


def assign_boxes_to_levels(
    boxes: Tensor, min_level: int, max_level: int, canonical_size: float = 224.0, canonical_level: int = 4
) -> Tensor:
    """FPN level of each box: floor(k0 + log2(sqrt(area) / 224)) clamped, minus ``min_level``.

    boxes: (K, 4) xyxy -> int64 (K,) in [0, max_level - min_level].
    """
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)  # K 2
    size = torch.sqrt(wh[:, 0] * wh[:, 1]).clamp(min=1e-6)  # K
    lvl = torch.floor(canonical_level + torch.log2(size / canonical_size) + 1e-8)
    lvl = lvl.clamp(min=min_level, max=max_level)
    return (lvl - min_level).to(torch.int64)


class ROIPooler(nn.Module):
    """Pools S x S features for boxes from one or several (FPN) feature levels.

    ``sampler``: "bilinear" (differentiable in the boxes) or "roi_align".
    ``strides``: stride of each given level, finest first (levels must be consecutive powers of 2
    when there are several).
    """

    def __init__(
        self,
        *,
        output_size: int,
        strides: Sequence[int],
        sampler: str = "bilinear",
        roi_align_sampling_ratio: int = 2,
        canonical_size: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        if sampler not in ("bilinear", "roi_align"):
            raise ValueError(f"MODEL.ROI.SAMPLER must be 'bilinear' or 'roi_align', got {sampler!r}")
        self.output_size = int(output_size)
        self.strides = [int(s) for s in strides]
        self.sampler = sampler
        self.sampling_ratio = int(roi_align_sampling_ratio)
        levels = [int(round(math.log2(s))) for s in self.strides]
        if len(levels) > 1 and levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(f"FPN strides must be consecutive powers of 2, got {self.strides}")
        self.min_level, self.max_level = levels[0], levels[-1]
        self.canonical_size = float(canonical_size)
        self.canonical_level = int(canonical_level)

    def _pool_level(self, feat: Tensor, box_lists: Sequence[Tensor], stride: int) -> Tensor:
        if self.sampler == "bilinear":
            return bilinear_sample_boxes(feat, box_lists, stride, self.output_size)
        rois = [b.detach().to(feat.dtype) for b in box_lists]
        return roi_align(
            feat, rois, output_size=self.output_size, spatial_scale=1.0 / stride,
            sampling_ratio=self.sampling_ratio, aligned=True,
        )

    def forward(self, features: Sequence[Tensor], box_lists: Sequence[Tensor]) -> Tensor:
        """features: L tensors (N, C, H_l, W_l); box_lists: N tensors (K_i, 4) xyxy input pixels.

        Returns (sum K_i, C, S, S) in the order of ``box_lists``.
        """
        if len(features) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature levels, got {len(features)}")
        if len(features) == 1:
            return self._pool_level(features[0], box_lists, self.strides[0])
        all_boxes = torch.cat(list(box_lists), dim=0) if len(box_lists) else features[0].new_zeros((0, 4))
        K = int(all_boxes.shape[0])
        C, S = int(features[0].shape[1]), self.output_size
        levels = assign_boxes_to_levels(
            all_boxes.detach(), self.min_level, self.max_level, self.canonical_size, self.canonical_level
        )  # K
        img_idx = torch.cat(
            [torch.full((int(b.shape[0]),), i, dtype=torch.int64, device=all_boxes.device) for i, b in enumerate(box_lists)]
        ) if len(box_lists) else levels.new_zeros((0,))
        out = features[0].new_zeros((K, C, S, S))
        for lvl, (feat, stride) in enumerate(zip(features, self.strides)):
            sel = torch.nonzero(levels == lvl).flatten()  # k
            if sel.numel() == 0:
                continue
            lvl_lists = [all_boxes[sel[img_idx[sel] == i]] for i in range(len(box_lists))]
            order = torch.cat([sel[img_idx[sel] == i] for i in range(len(box_lists))])
            pooled = self._pool_level(feat, lvl_lists, stride)  # k C S S
            out.index_copy_(0, order, pooled)  # in place: each level writes only its rows
        return out
