"""Region proposal network of the localization layer.

Head: 3x3 conv (``HEAD_CHANNELS``) + ReLU, then 1x1 convs giving one objectness logit and four
box deltas per anchor (the delta conv starts at zero, so the first boxes are the anchors). The
original's 2-way softmax per anchor is replaced by one sigmoid logit (the same model).

Training (the original's box sampler), per image:
  1. boxes = anchors + predicted deltas (detached) when ``MATCH_PREDICTED_BOXES``, else anchors;
  2. boxes crossing the image border are left out (``IGNORE_CROSS_BOUNDARY``);
  3. IoU with the ground truth: > hi positive, < lo negative, in between ignored; the best box of
     each ground-truth box is positive too (matched to that box);
  4. up to ``BATCH_SIZE_PER_IMAGE * POSITIVE_FRACTION`` positives at random, negatives fill the
     rest of ``BATCH_SIZE_PER_IMAGE``.
  The sample (positives first) goes to the recognition network as *predicted* boxes that still
  depend on the deltas, so recognition losses can reach the RPN regressor through the sampler.
Losses: ``loss_rpn_cls`` (BCE over the sample), ``loss_rpn_box`` (smooth-L1 on positives' deltas),
``loss_rpn_delta_l2`` (the original's L2 pull on all deltas; only when its weight is > 0).

Inference, per image: top ``PRE_NMS_TOPK`` per level, boxes clipped to the image, empty boxes
dropped, NMS ``NMS_THRESH`` (per level for FPN), best ``POST_NMS_TOPK`` kept.

All boxes are xyxy in input (resized) pixels.

Shapes: N: images, A: anchors of all levels, A_l: anchors of level l, S: sampled boxes,
G: ground-truth boxes, P: proposals, T: caption tokens.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from densecap.structures import Instances, apply_deltas, clip_xyxy, encode_deltas

from .anchors import AnchorGenerator
from .losses import box_regression_loss, delta_l2_loss, objectness_loss

logger = logging.getLogger(__name__)

__all__ = ["RPNHead", "RPN", "sample_boxes"]


class RPNHead(nn.Module):
    """Shared over levels: features (N, C, H, W) -> logits (N, H*W*A), deltas (N, H*W*A, 4)."""

    def __init__(self, *, in_channels: int, head_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, head_channels, 3, padding=1)
        self.objectness = nn.Conv2d(head_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(head_channels, 4 * num_anchors, 1)
        for m in (self.conv, self.objectness):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        nn.init.zeros_(self.deltas.weight)
        nn.init.zeros_(self.deltas.bias)

    def forward(self, features: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = torch.relu(self.conv(x))
            n = x.shape[0]
            logits.append(self.objectness(t).permute(0, 2, 3, 1).reshape(n, -1))  # N HWA
            deltas.append(self.deltas(t).permute(0, 2, 3, 1).reshape(n, -1, 4))  # N HWA 4
        return logits, deltas


def sample_boxes(
    match_boxes: Tensor,
    gt_boxes: Tensor,
    image_size: Tuple[int, int],
    *,
    batch_size: int,
    positive_fraction: float,
    iou_thresholds: Sequence[float],
    ignore_cross_boundary: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The original's box sampler for one image.

    match_boxes: (A, 4) boxes compared with the ground truth (predicted or anchors);
    gt_boxes: (G, 4). Returns (pos_idx (p,), neg_idx (q,), matched_gt (p,)) int64.
    """
    lo, hi = float(iou_thresholds[0]), float(iou_thresholds[1])
    h, w = image_size
    A = match_boxes.shape[0]
    device = match_boxes.device
    finite = torch.isfinite(match_boxes).all(dim=1)
    if ignore_cross_boundary:
        valid = finite & (match_boxes[:, 0] >= 0) & (match_boxes[:, 1] >= 0)
        valid &= (match_boxes[:, 2] <= w) & (match_boxes[:, 3] <= h)
    else:
        valid = finite
    vidx = torch.nonzero(valid).flatten()  # Av
    labels = torch.full((A,), -1, dtype=torch.int64, device=device)
    matched = torch.full((A,), -1, dtype=torch.int64, device=device)
    G = gt_boxes.shape[0]
    if vidx.numel() > 0:
        if G > 0:
            iou = box_iou(match_boxes[vidx], gt_boxes)  # Av G
            max_iou, arg = iou.max(dim=1)  # Av
            lab = torch.full_like(arg, -1)
            lab[max_iou < lo] = 0
            lab[max_iou > hi] = 1
            best_iou, best = iou.max(dim=0)  # G
            ok = best_iou > 0
            lab[best[ok]] = 1
            arg[best[ok]] = torch.arange(G, device=device)[ok]
            labels[vidx] = lab
            matched[vidx] = arg
        else:
            labels[vidx] = 0
    pos = torch.nonzero(labels == 1).flatten()
    neg = torch.nonzero(labels == 0).flatten()
    num_pos = min(pos.numel(), int(batch_size * positive_fraction))
    num_neg = min(neg.numel(), batch_size - num_pos)
    pos = pos[torch.randperm(pos.numel(), device=device)[:num_pos]]
    neg = neg[torch.randperm(neg.numel(), device=device)[:num_neg]]
    return pos, neg, matched[pos]


class RPN(nn.Module):
    def __init__(
        self,
        *,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        in_features: Sequence[str],
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        iou_thresholds: Sequence[float] = (0.3, 0.7),
        match_predicted_boxes: bool = True,
        ignore_cross_boundary: bool = True,
        nms_thresh: float = 0.7,
        pre_nms_topk: int = 6000,
        post_nms_topk: int = 1000,
        loss_weight_cls: float = 0.1,
        loss_weight_box: float = 0.05,
        smooth_l1_beta: float = 1.0,
        delta_l2_weight: float = 5e-5,
    ) -> None:
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.in_features = list(in_features)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.iou_thresholds = tuple(float(x) for x in iou_thresholds)
        self.match_predicted_boxes = bool(match_predicted_boxes)
        self.ignore_cross_boundary = bool(ignore_cross_boundary)
        # inference options (attributes may be changed after building)
        self.nms_thresh = float(nms_thresh)
        self.pre_nms_topk = int(pre_nms_topk)
        self.post_nms_topk = int(post_nms_topk)
        self.loss_weight_cls = float(loss_weight_cls)
        self.loss_weight_box = float(loss_weight_box)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.delta_l2_weight = float(delta_l2_weight)

    @classmethod
    def from_config(cls, cfg, backbone) -> "RPN":
        r = cfg.MODEL.RPN
        strides = [backbone.strides[f] for f in backbone.rpn_features]
        anchors = AnchorGenerator.from_config(cfg, strides)
        head = RPNHead(
            in_channels=backbone.out_channels, head_channels=r.HEAD_CHANNELS, num_anchors=anchors.num_anchors
        )
        return cls(
            head=head, anchor_generator=anchors, in_features=backbone.rpn_features,
            batch_size_per_image=r.BATCH_SIZE_PER_IMAGE, positive_fraction=r.POSITIVE_FRACTION,
            iou_thresholds=r.IOU_THRESHOLDS, match_predicted_boxes=r.MATCH_PREDICTED_BOXES,
            ignore_cross_boundary=r.IGNORE_CROSS_BOUNDARY, nms_thresh=r.NMS_THRESH,
            pre_nms_topk=r.PRE_NMS_TOPK_TEST, post_nms_topk=r.POST_NMS_TOPK_TEST,
            loss_weight_cls=r.LOSS_WEIGHT_CLS, loss_weight_box=r.LOSS_WEIGHT_BOX,
            smooth_l1_beta=r.SMOOTH_L1_BETA, delta_l2_weight=r.DELTA_L2_WEIGHT,
        )

    def forward(
        self,
        features: Dict[str, Tensor],
        image_sizes: Sequence[Tuple[int, int]],
        gt_instances: Optional[Sequence[Instances]] = None,
    ):
        """Training: (samples, losses); eval: (proposals, {}).

        samples: per image ``Instances(image_size, proposal_boxes (S, 4) [depends on the deltas],
        gt_objectness int64 (S,) 1/0, gt_boxes (S, 4), gt_captions (S, T))``, positives first
        (negatives carry zero boxes/captions).
        proposals: per image ``Instances(image_size, proposal_boxes (P, 4), objectness_logits (P,))``
        sorted by logit.
        """
        feats = [features[f] for f in self.in_features]
        logits, deltas = self.head(feats)  # [N A_l], [N A_l 4]
        anchors = self.anchor_generator([f.shape[-2:] for f in feats], feats[0].device)  # [A_l 4]
        if self.training:
            if gt_instances is None:
                raise ValueError("the RPN needs ground truth in training")
            return self._forward_train(logits, deltas, anchors, image_sizes, gt_instances)
        return self._proposals(logits, deltas, anchors, image_sizes), {}

    # ---- training ---------------------------------------------------------------------------
    def _forward_train(self, logits, deltas, anchors, image_sizes, gt_instances):
        all_logits = torch.cat(logits, dim=1)  # N A
        all_deltas = torch.cat(deltas, dim=1)  # N A 4
        all_anchors = torch.cat(anchors, dim=0)  # A 4
        samples: List[Instances] = []
        cls_logits, cls_labels, box_pred, box_target = [], [], [], []
        for i, (size, gt) in enumerate(zip(image_sizes, gt_instances)):
            d = all_deltas[i]  # A 4
            gt_boxes = gt.gt_boxes.to(d.dtype)  # G 4
            with torch.no_grad():
                match = apply_deltas(all_anchors, d.detach()) if self.match_predicted_boxes else all_anchors
                pos, neg, matched = sample_boxes(
                    match, gt_boxes, size, batch_size=self.batch_size_per_image,
                    positive_fraction=self.positive_fraction, iou_thresholds=self.iou_thresholds,
                    ignore_cross_boundary=self.ignore_cross_boundary,
                )
            idx = torch.cat([pos, neg])  # S
            labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])  # S
            cls_logits.append(all_logits[i, idx])
            cls_labels.append(labels)
            box_pred.append(d[pos])
            box_target.append(encode_deltas(all_anchors[pos], gt_boxes[matched]))
            S, T = idx.numel(), gt.gt_captions.shape[1]
            m_boxes = torch.zeros((S, 4), dtype=d.dtype, device=d.device)
            m_boxes[: pos.numel()] = gt_boxes[matched]
            m_caps = torch.zeros((S, T), dtype=torch.long, device=d.device)
            m_caps[: pos.numel()] = gt.gt_captions[matched]
            samples.append(
                Instances(
                    size, proposal_boxes=apply_deltas(all_anchors[idx], d[idx]), gt_objectness=labels,
                    gt_boxes=m_boxes, gt_captions=m_caps,
                )
            )
        losses = {
            "loss_rpn_cls": self.loss_weight_cls * objectness_loss(torch.cat(cls_logits), torch.cat(cls_labels)),
            "loss_rpn_box": self.loss_weight_box
            * box_regression_loss(torch.cat(box_pred), torch.cat(box_target), self.smooth_l1_beta),
        }
        if self.delta_l2_weight > 0:
            losses["loss_rpn_delta_l2"] = self.delta_l2_weight * delta_l2_loss(all_deltas, len(image_sizes))
        return samples, losses

    # ---- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def _proposals(self, logits, deltas, anchors, image_sizes) -> List[Instances]:
        out = []
        for i, size in enumerate(image_sizes):
            boxes_l, scores_l, level_l = [], [], []
            for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
                s = lg[i]  # A_l
                k = min(self.pre_nms_topk, s.numel()) if self.pre_nms_topk > 0 else s.numel()
                s, top = s.topk(k)
                boxes_l.append(apply_deltas(an[top], dl[i, top]))
                scores_l.append(s)
                level_l.append(torch.full_like(top, lvl))
            boxes = clip_xyxy(torch.cat(boxes_l), size[0], size[1])  # P 4
            scores, levels = torch.cat(scores_l), torch.cat(level_l)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & torch.isfinite(scores)
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
            keep = batched_nms(boxes.float(), scores.float(), levels, self.nms_thresh)  # sorted by score
            if self.post_nms_topk > 0:
                keep = keep[: self.post_nms_topk]
            out.append(Instances(size, proposal_boxes=boxes[keep], objectness_logits=scores[keep]))
        return out
