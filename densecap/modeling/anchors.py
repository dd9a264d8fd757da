"""Anchor boxes for the RPN.

Single-level backbones use the original's list of (w, h) anchors (``MODEL.RPN.ANCHORS``), FPN
uses per-level square sizes (``MODEL.RPN.ANCHOR_SIZES_FPN``) times ``MODEL.RPN.ASPECT_RATIOS``
(ratio = h / w, area kept). Anchor centres sit at the feature cell centres,
``((j + 0.5) * stride, (i + 0.5) * stride)`` in input pixels (the sampler's convention).

Order of the anchors of one level: row i, then column j, then anchor a — the order of the RPN
head's outputs after ``permute(0, 2, 3, 1)``.

Shapes: H, W: feature map size, A: anchors per location.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["AnchorGenerator"]


class AnchorGenerator(nn.Module):
    """``forward(shapes [(H, W)], device) -> [anchors (H*W*A, 4) xyxy]`` one per level."""

    def __init__(self, *, sizes_wh: Sequence[Sequence[Tuple[float, float]]], strides: Sequence[int]) -> None:
        super().__init__()
        if len(sizes_wh) != len(strides):
            raise ValueError(f"{len(sizes_wh)} anchor sets for {len(strides)} feature levels")
        counts = {len(s) for s in sizes_wh}
        if len(counts) != 1:
            raise ValueError(f"every level needs the same number of anchors, got {[len(s) for s in sizes_wh]}")
        self.strides = [int(s) for s in strides]
        self.num_anchors = counts.pop()
        self.cell_anchors = [torch.tensor(s, dtype=torch.float32).reshape(-1, 2) for s in sizes_wh]
        self._cache: Dict[Tuple, List[Tensor]] = {}

    @classmethod
    def from_config(cls, cfg, strides: Sequence[int]) -> "AnchorGenerator":
        r = cfg.MODEL.RPN
        if len(strides) == 1:
            return cls(sizes_wh=[[tuple(a) for a in r.ANCHORS]], strides=strides)
        if len(r.ANCHOR_SIZES_FPN) != len(strides):
            raise ValueError(
                f"MODEL.RPN.ANCHOR_SIZES_FPN has {len(r.ANCHOR_SIZES_FPN)} levels, the backbone {len(strides)}"
            )
        sizes = []
        for level_sizes in r.ANCHOR_SIZES_FPN:
            wh = []
            for s in level_sizes:
                for ratio in r.ASPECT_RATIOS:
                    w = s / math.sqrt(ratio)
                    wh.append((w, w * ratio))
            sizes.append(wh)
        return cls(sizes_wh=sizes, strides=strides)

    def forward(self, shapes: Sequence[Tuple[int, int]], device: torch.device) -> List[Tensor]:
        key = (tuple((int(h), int(w)) for h, w in shapes), str(device))
        if key not in self._cache:
            out = []
            for (h, w), stride, wh in zip(shapes, self.strides, self.cell_anchors):
                ys = (torch.arange(h, dtype=torch.float32) + 0.5) * stride  # H
                xs = (torch.arange(w, dtype=torch.float32) + 0.5) * stride  # W
                cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # H W
                ctr = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # HW 1 2
                half = (wh * 0.5)[None]  # 1 A 2
                boxes = torch.cat([ctr - half, ctr + half], dim=-1).reshape(-1, 4)  # HWA 4
                out.append(boxes.to(device))
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = out
        return self._cache[key]
