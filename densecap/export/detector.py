"""The detector + region-feature part of a DenseCap model as one traceable module.

N = 1 image, H, W: the padded input size the module is built for, R: detections, D: region code size.

``RegionDetector(model, height=H, width=W)`` runs backbone -> RPN (top-k per level, box decoding,
clipping, NMS) -> bilinear sampler -> recognition MLP -> box refinement -> final NMS, exactly as
``DenseCapModel.inference`` does for one image, and stops before caption decoding:

    forward(images float32 (1, 3, H, W) normalised and padded as model.preprocess_image does,
            image_hw float32 (2,) the resized image's (height, width) inside the padding,
            orig_hw float32 (2,) the original image's (height, width), scale float32 () = resized / original)
    -> boxes float32 (R, 4) [x, y, w, h] original-image pixels, best score first,
       scores float32 (R,) sigmoid of the objectness, codes float32 (R, D) region codes

The anchors are constants of the (H, W) the module is built for (an exported graph takes that
input shape only); everything data-dependent (how many boxes survive NMS) stays dynamic.
Captions are produced from ``codes`` by the model's language model (``caption_head.generate``).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import batched_nms, nms

from densecap.structures import apply_deltas

__all__ = ["RegionDetector", "preprocess"]


def _clip(boxes: Tensor, hw: Tensor) -> Tensor:
    """xyxy (P, 4) clipped to [0, w] x [0, h], ``hw`` a (2,) tensor (traceable, unlike Python floats)."""
    zero = torch.zeros((), dtype=boxes.dtype)
    x1 = torch.minimum(torch.maximum(boxes[:, 0], zero), hw[1])
    y1 = torch.minimum(torch.maximum(boxes[:, 1], zero), hw[0])
    x2 = torch.minimum(torch.maximum(boxes[:, 2], zero), hw[1])
    y2 = torch.minimum(torch.maximum(boxes[:, 3], zero), hw[0])
    return torch.stack([x1, y1, x2, y2], dim=1)


def _sample_level(feat: Tensor, boxes: Tensor, stride: int, size: int, sampler: str, ratio: int) -> Tensor:
    """(K, C, S, S) features of boxes (K, 4) xyxy input pixels from one level (1, C, h, w), as
    :class:`~densecap.modeling.poolers.ROIPooler` samples them, with no shape read as a Python int
    (those would become constants of the traced graph)."""
    from densecap.modeling.poolers import _box_grid

    if sampler == "roi_align":
        from torchvision.ops import roi_align

        rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)  # K 5
        return roi_align(feat, rois, output_size=size, spatial_scale=1.0 / stride, sampling_ratio=ratio, aligned=True)
    C, H, W = feat.shape[1], feat.shape[2], feat.shape[3]
    grid = _box_grid(boxes.to(feat.dtype), size, stride, H, W).reshape(1, -1, size, 2)  # 1 KS S 2
    out = F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # 1 C KS S
    return out.reshape(C, -1, size, size).transpose(0, 1)  # K C S S


def _pool(pooler, features: List[Tensor], boxes: Tensor) -> Tensor:
    """ROIPooler.forward for one image's boxes (K, 4), traceable with K unknown."""
    from densecap.modeling.poolers import assign_boxes_to_levels

    S, sampler, ratio = pooler.output_size, pooler.sampler, pooler.sampling_ratio
    if len(features) == 1:
        return _sample_level(features[0], boxes, pooler.strides[0], S, sampler, ratio)
    levels = assign_boxes_to_levels(boxes, pooler.min_level, pooler.max_level, pooler.canonical_size,
                                    pooler.canonical_level)  # K
    pooled, order = [], []
    for lvl, (feat, stride) in enumerate(zip(features, pooler.strides)):
        sel = torch.nonzero(levels == lvl).flatten()  # k
        pooled.append(_sample_level(feat, boxes[sel], stride, S, sampler, ratio))
        order.append(sel)
    inverse = torch.argsort(torch.cat(order))  # position of box i among the concatenated levels
    return torch.cat(pooled)[inverse]


class RegionDetector(nn.Module):
    """See the module docstring."""

    def __init__(self, model: nn.Module, *, height: int, width: int) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        self.input_hw = (int(height), int(width))
        with torch.no_grad():
            dummy = torch.zeros((1, 3, int(height), int(width)), device=next(model.parameters()).device)
            feats = self.backbone(dummy)
            shapes = [tuple(feats[f].shape[-2:]) for f in self.rpn.in_features]
        for i, a in enumerate(self.rpn.anchor_generator(shapes, dummy.device)):
            self.register_buffer(f"anchors_{i}", a.clone(), persistent=False)
        self.num_levels = len(shapes)

    def _anchors(self) -> List[Tensor]:
        return [getattr(self, f"anchors_{i}") for i in range(self.num_levels)]

    def forward(self, images: Tensor, image_hw: Tensor, orig_hw: Tensor, scale: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        features = self.backbone(images)
        rpn = self.rpn
        logits, deltas = rpn.head([features[f] for f in rpn.in_features])  # [1 A_l], [1 A_l 4]
        boxes_l, scores_l, level_l = [], [], []
        for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, self._anchors())):
            s = lg[0]
            k = min(rpn.pre_nms_topk, s.numel()) if rpn.pre_nms_topk > 0 else s.numel()
            s, top = s.topk(k)
            boxes_l.append(apply_deltas(an[top], dl[0, top]))
            scores_l.append(s)
            level_l.append(torch.full_like(top, lvl))
        boxes = _clip(torch.cat(boxes_l), image_hw)  # P 4
        scores, levels = torch.cat(scores_l), torch.cat(level_l)
        keep = torch.nonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & torch.isfinite(scores)).flatten()
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, rpn.nms_thresh)
        if rpn.post_nms_topk > 0:
            keep = keep[: rpn.post_nms_topk]
        proposals = boxes[keep]  # K 4
        heads = self.roi_heads
        pooled = _pool(heads.pooler, [features[f] for f in heads.in_features], proposals)  # K C S S
        codes = heads.recognition(pooled)  # K D
        obj, box_deltas = heads.objectness(codes).squeeze(1), heads.box_deltas(codes)  # K, K 4
        probs = torch.sigmoid(obj)
        refined = _clip(apply_deltas(proposals, box_deltas), image_hw)
        sel = torch.nonzero((refined[:, 2] > refined[:, 0]) & (refined[:, 3] > refined[:, 1])
                            & (probs >= heads.score_thresh)).flatten()
        refined, probs, codes = refined[sel], probs[sel], codes[sel]
        if heads.nms_thresh < 1.0:
            order = nms(refined, probs, heads.nms_thresh)
        else:
            order = torch.sort(probs, descending=True, stable=True).indices
        if heads.detections_per_image > 0:
            order = order[: heads.detections_per_image]
        refined, probs, codes = refined[order], probs[order], codes[order]
        b = _clip(refined / scale, orig_hw)  # original pixels
        xywh = torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], dim=1)
        return xywh, probs, codes


def preprocess(model: nn.Module, image_chw: Tensor, height: int, width: int) -> Tensor:
    """float32 (1, 3, H, W): a resized uint8 (3, h, w) image normalised by ``model.transform`` and
    zero-padded to the fixed (H, W) of the exported graph (the transform itself pads only to the
    backbone's size divisibility)."""
    out = torch.zeros((1, 3, int(height), int(width)), dtype=torch.float32)
    h, w = image_chw.shape[-2:]
    x, _ = model.transform([{"image": image_chw}])  # 1 3 h' w', h' >= h, w' >= w
    out[0, :, :h, :w] = x[0, :, :h, :w].cpu()
    return out
