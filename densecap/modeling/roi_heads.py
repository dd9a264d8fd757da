"""Recognition network and its heads: sampled box features -> region code, objectness, refined box.

Recognition network (the original's fc6/fc7): flatten (C*S*S) -> Linear(FC_DIM) + ReLU + dropout
-> Linear(FC_DIM) + ReLU + dropout = the region code. Heads: objectness Linear(FC_DIM, 1); box
refinement Linear(FC_DIM, 4) (zero init) giving deltas applied on top of the RPN box
(``apply_deltas``, centre-size parametrisation).

Training: runs on the RPN's sample (its positives first, subsampled to
``ROI.BATCH_SIZE_PER_IMAGE`` with at most ``ROI.POSITIVE_FRACTION`` positives; the defaults keep
the whole RPN sample, as the original). ``loss_cls``: BCE, positives 1 / negatives 0, mean over
the sample; ``loss_box``: smooth-L1 between the positives' deltas and the deltas that move the
RPN box onto its matched ground truth. With ``BACKPROP_BOXES`` both the sampled features and the
box target stay connected to the RPN boxes (gradients reach the RPN regressor, as the original);
without, the boxes are detached. Returns the positives' region codes and caption targets for the
language model.

Inference: objectness + refinement on every proposal, then :func:`select_detections` (NMS
``nms_thresh`` on the refined boxes by score, ``score_thresh``, ``detections_per_image``);
proposals given by the user (``refine=False``) are kept as they are, in order. With
``MODEL.ROI_HEADS.PAIR_BOXES N`` (0 = off, the original), the unions of pairs of each image's N
best detections are scored the same way and added (:meth:`DenseCapROIHeads._add_pair_unions`):
a region showing two objects and their relation is annotated with such a union box, which the
RPN rarely proposes.

Visual context (``MODEL.ROI_HEADS.CONTEXT``, off by default; ``densecap/modeling/context.py``):
the codes returned for captioning (training: the positives; test: ``region_codes``) are then the
region code concatenated with the codes of its context boxes, (K, ``code_dim``); objectness and
box refinement always read the region's own code.

Shapes: K: boxes, C: channels, S: pooled size, F: FC_DIM, T: caption tokens.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from densecap.structures import Instances, apply_deltas, clip_xyxy, encode_deltas

from .context import fuse_context, parse_context
from .losses import box_regression_loss, objectness_loss
from .poolers import ROIPooler
from .postprocess import pair_unions, select_detections

logger = logging.getLogger(__name__)

__all__ = ["RecognitionNetwork", "DenseCapROIHeads"]


class RecognitionNetwork(nn.Module):
    """(K, C, S, S) -> region codes (K, F)."""

    def __init__(self, *, in_channels: int, pooler_resolution: int, fc_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels * pooler_resolution * pooler_resolution, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.drop = nn.Dropout(dropout)
        self.out_dim = int(fc_dim)

    def load_pretrained(self, tensors: Dict[str, Tensor]) -> bool:
        """Copy fc6/fc7 (e.g. VGG-16's) when the shapes agree; returns whether it did."""
        own = {"fc6.weight": self.fc6.weight, "fc6.bias": self.fc6.bias, "fc7.weight": self.fc7.weight,
               "fc7.bias": self.fc7.bias}
        if any(own[k].shape != tensors[k].shape for k in own):
            logger.info("recognition network: pretrained fc6/fc7 shapes differ, random initialisation")
            return False
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(tensors[k])
        logger.info("recognition network initialised from the backbone's pretrained fc6/fc7")
        return True

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)  # K CSS
        x = self.drop(torch.relu(self.fc6(x)))  # K F
        return self.drop(torch.relu(self.fc7(x)))  # K F


class DenseCapROIHeads(nn.Module):
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        pooler: ROIPooler,
        recognition: RecognitionNetwork,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        backprop_boxes: bool = True,
        loss_weight_cls: float = 0.1,
        loss_weight_box: float = 0.1,
        smooth_l1_beta: float = 1.0,
        nms_thresh: float = 0.3,
        score_thresh: float = 0.0,
        detections_per_image: int = 0,
        context: Sequence[str] = (),
        context_union_scale: float = 2.0,
        pair_boxes: int = 0,
        pair_duplicate_iou: float = 0.7,
        pair_score_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_features = list(in_features)
        self.pooler = pooler
        self.recognition = recognition
        self.objectness = nn.Linear(recognition.out_dim, 1)
        self.box_deltas = nn.Linear(recognition.out_dim, 4)
        nn.init.normal_(self.objectness.weight, std=0.01)
        nn.init.zeros_(self.objectness.bias)
        nn.init.zeros_(self.box_deltas.weight)
        nn.init.zeros_(self.box_deltas.bias)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.backprop_boxes = bool(backprop_boxes)
        self.loss_weight_cls = float(loss_weight_cls)
        self.loss_weight_box = float(loss_weight_box)
        self.smooth_l1_beta = float(smooth_l1_beta)
        # inference options (attributes may be changed after building)
        self.nms_thresh = float(nms_thresh)
        self.score_thresh = float(score_thresh)
        self.detections_per_image = int(detections_per_image)
        # visual context fused into the captioned codes ("global", "union"; empty = none)
        self.context = parse_context(context)
        self.context_union_scale = float(context_union_scale)
        # test time: unions of pairs of the best `pair_boxes` detections as extra candidates
        self.pair_boxes = int(pair_boxes)
        self.pair_duplicate_iou = float(pair_duplicate_iou)
        self.pair_score_scale = float(pair_score_scale)

    @property
    def code_dim(self) -> int:
        """Size of the codes returned for captioning: F, times (1 + number of contexts)."""
        return self.recognition.out_dim * (1 + len(self.context))

    @classmethod
    def from_config(cls, cfg, backbone) -> "DenseCapROIHeads":
        r = cfg.MODEL.ROI
        pooler = ROIPooler(
            output_size=r.POOLER_RESOLUTION, strides=[backbone.strides[f] for f in backbone.roi_features],
            sampler=r.SAMPLER,
        )
        recognition = RecognitionNetwork(
            in_channels=backbone.out_channels, pooler_resolution=r.POOLER_RESOLUTION, fc_dim=r.FC_DIM,
            dropout=r.DROPOUT,
        )
        if hasattr(backbone, "pop_recognition_init"):
            init = backbone.pop_recognition_init()
            if init is not None:
                recognition.load_pretrained(init)
        return cls(
            in_features=backbone.roi_features, pooler=pooler, recognition=recognition,
            batch_size_per_image=r.BATCH_SIZE_PER_IMAGE, positive_fraction=r.POSITIVE_FRACTION,
            backprop_boxes=r.BACKPROP_BOXES, loss_weight_cls=r.LOSS_WEIGHT_CLS, loss_weight_box=r.LOSS_WEIGHT_BOX,
            smooth_l1_beta=r.SMOOTH_L1_BETA, nms_thresh=r.NMS_THRESH_TEST, score_thresh=cfg.TEST.SCORE_THRESH,
            detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE, context=parse_context(cfg.MODEL.ROI_HEADS.CONTEXT),
            context_union_scale=cfg.MODEL.ROI_HEADS.CONTEXT_UNION_SCALE, pair_boxes=cfg.MODEL.ROI_HEADS.PAIR_BOXES,
            pair_score_scale=cfg.MODEL.ROI_HEADS.PAIR_SCORE_SCALE,
        )

    def _recognize(self, features: Dict[str, Tensor], box_lists: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        pooled = self.pooler([features[f] for f in self.in_features], box_lists)  # K C S S
        codes = self.recognition(pooled)  # K F
        return codes, self.objectness(codes).squeeze(1), self.box_deltas(codes)  # K F, K, K 4

    def _with_context(self, features: Dict[str, Tensor], codes: Tensor, box_lists: Sequence[Tensor],
                      image_sizes: Sequence[Tuple[int, int]]) -> Tensor:
        """Region codes (K, F) -> captioned codes (K, code_dim) (unchanged without context)."""
        if not self.context:
            return codes
        feats = [features[f] for f in self.in_features]
        return fuse_context(
            lambda boxes: self.recognition(self.pooler(feats, boxes)), codes, box_lists, image_sizes, self.context,
            self.context_union_scale,
        )

    def forward_train(
        self, features: Dict[str, Tensor], samples: Sequence[Instances], return_boxes: bool = False
    ):
        """samples: the RPN's (positives first). Returns (losses, positive codes (P, code_dim), captions (P, T));
        with ``return_boxes`` also ``{"refined": (P, 4), "gt": (P, 4), "image_sizes": [(h, w)] * P}``: the
        positives' boxes after this head's refinement (detached) and their ground truth, xyxy input frame."""
        box_lists, labels, gt_boxes, gt_caps = [], [], [], []
        max_pos = int(self.batch_size_per_image * self.positive_fraction)
        for s in samples:
            lab = s.gt_objectness
            n_pos_all = int((lab == 1).sum())
            n_pos = min(n_pos_all, max_pos)
            n_neg = min(len(s) - n_pos_all, self.batch_size_per_image - n_pos)
            idx = torch.cat([torch.arange(n_pos), n_pos_all + torch.arange(n_neg)]).to(lab.device)
            boxes = s.proposal_boxes[idx]
            if not self.backprop_boxes:
                boxes = boxes.detach()
            box_lists.append(boxes)
            labels.append(lab[idx])
            gt_boxes.append(s.gt_boxes[idx[:n_pos]])
            gt_caps.append(s.gt_captions[idx[:n_pos]])
        codes, logits, deltas = self._recognize(features, box_lists)
        labels_t = torch.cat(labels)  # K
        pos = torch.nonzero(labels_t == 1).flatten()  # P
        pos_boxes = torch.cat(box_lists)[pos]  # P 4
        target = encode_deltas(pos_boxes, torch.cat(gt_boxes).to(pos_boxes.dtype))  # P 4
        losses = {
            "loss_cls": self.loss_weight_cls * objectness_loss(logits, labels_t),
            "loss_box": self.loss_weight_box * box_regression_loss(deltas[pos], target, self.smooth_l1_beta),
        }
        T = max([int(c.shape[1]) for c in gt_caps] + [0])
        caps = torch.cat([nn.functional.pad(c, (0, T - c.shape[1])) for c in gt_caps])  # P T
        pos_codes = codes[pos]  # P F
        if self.context:
            pos_lists = list(pos_boxes.split([int(b.shape[0]) for b in gt_boxes]))  # positives come first per image
            pos_codes = self._with_context(features, pos_codes, pos_lists, [s.image_size for s in samples])  # P code_dim
        if return_boxes:
            sizes = [s.image_size for s, g in zip(samples, gt_boxes) for _ in range(int(g.shape[0]))]
            refined = apply_deltas(pos_boxes.detach(), deltas[pos].detach())  # P 4
            return losses, pos_codes, caps, {"refined": refined, "gt": torch.cat(gt_boxes).to(refined.dtype),
                                             "image_sizes": sizes}
        return losses, pos_codes, caps

    def _add_pair_unions(self, features: Dict[str, Tensor], dets: List[Instances], refine: Sequence[bool]) -> List[Instances]:
        """``PAIR_BOXES``: score the unions of pairs of each image's best detections like proposals
        (objectness; the unions of two refined boxes are not refined again) and add those that
        survive: NMS among themselves at ``nms_thresh``;
        a union within IoU ``pair_duplicate_iou`` of a detection already kept is that region, so it
        is not added and the detection takes its pair of parts instead. The added unions' scores are
        multiplied by ``pair_score_scale`` (after the NMS, before the ranking with the detections).
        The detections of an image stay sorted by score and capped at ``detections_per_image``;
        ``pair_parts`` (n, 2) gives each pair region's two detections (their positions in the
        result; -1 for the other regions, or for a part the cap dropped)."""
        made = [pair_unions(d.pred_boxes_resized, self.pair_boxes) if ref else
                (d.pred_boxes_resized[:0], torch.zeros((0, 2), dtype=torch.long, device=d.pred_boxes_resized.device))
                for d, ref in zip(dets, refine)]
        unions = [u for u, _ in made]  # U 4 per image
        codes = logits = None
        if sum(int(u.shape[0]) for u in unions):
            codes, logits, _ = self._recognize(features, unions)
        out, start = [], 0
        for d, (u, parts) in zip(dets, made):
            n, m = u.shape[0], len(d)
            own_parts = torch.full((m, 2), -1, dtype=torch.long, device=d.scores.device)
            if n == 0:
                out.append(Instances(d.image_size, pred_boxes_resized=d.pred_boxes_resized, scores=d.scores,
                                     region_codes=d.region_codes, pair_parts=own_parts))
                continue
            c, s = codes[start : start + n], torch.sigmoid(logits[start : start + n])
            start += n
            h, w = d.image_size
            b = clip_xyxy(u, h, w)  # unions of refined boxes: not refined again (AP at IoU 0.7 +1.6)
            keep = select_detections(b, s, nms_thresh=self.nms_thresh, score_thresh=self.score_thresh)
            b, s, c, parts = b[keep], s[keep], c[keep], parts[keep]
            if len(b) and m:
                # a union that repeats a detection (IoU > pair_duplicate_iou) is not added: that
                # detection becomes the pair region (its caption is composed from the same parts)
                iou, near = box_iou(b.float(), d.pred_boxes_resized.float()).max(dim=1)
                dup = iou > self.pair_duplicate_iou
                for k in torch.nonzero(dup).flatten().tolist():  # the unions are in score order: the best pair wins
                    j = int(near[k])
                    if own_parts[j, 0] < 0 and j not in parts[k].tolist():
                        own_parts[j] = parts[k]
                b, s, c, parts = b[~dup], s[~dup], c[~dup], parts[~dup]
            sc = torch.cat([d.scores, s * self.pair_score_scale])
            order = torch.sort(sc, descending=True, stable=True).indices
            if self.detections_per_image > 0:
                order = order[: self.detections_per_image]
            new_pos = torch.full((m + len(b),), -1, dtype=torch.long, device=sc.device)
            new_pos[order] = torch.arange(len(order), device=sc.device)
            all_parts = torch.cat([own_parts, parts.to(own_parts.device)])[order]  # positions before the ordering
            both = (all_parts >= 0).all(dim=1)
            remapped = torch.full_like(all_parts, -1)
            remapped[both] = new_pos[all_parts[both]]
            remapped[(remapped < 0).any(dim=1)] = -1  # a part fell to the cap: no pair
            out.append(Instances(d.image_size, pred_boxes_resized=torch.cat([d.pred_boxes_resized, b])[order], scores=sc[order],
                                 region_codes=torch.cat([d.region_codes, c])[order], pair_parts=remapped))
        return out

    @torch.no_grad()
    def forward_test(
        self, features: Dict[str, Tensor], proposals: Sequence[Instances], refine: Optional[Sequence[bool]] = None
    ) -> List[Instances]:
        """Per image ``Instances(pred_boxes_resized (n, 4) xyxy input frame (clipped to it), scores (n,),
        region_codes (n, code_dim))``; ``score_thresh`` is applied here (the model's only score threshold).

        ``refine[i] = False``: image i's proposals are user boxes: no refinement, no selection.
        """
        refine = list(refine) if refine is not None else [True] * len(proposals)
        box_lists = [p.proposal_boxes for p in proposals]
        codes, logits, deltas = self._recognize(features, box_lists)
        scores = torch.sigmoid(logits)
        out, start = [], 0
        for p, boxes, ref in zip(proposals, box_lists, refine):
            n = boxes.shape[0]
            c, s, d = codes[start : start + n], scores[start : start + n], deltas[start : start + n]
            start += n
            if ref:
                h, w = p.image_size
                boxes = clip_xyxy(apply_deltas(boxes, d), h, w)
                nonempty = torch.nonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).flatten()
                keep = nonempty[
                    select_detections(
                        boxes[nonempty], s[nonempty], nms_thresh=self.nms_thresh, score_thresh=self.score_thresh,
                        max_detections=self.detections_per_image,
                    )
                ]
                boxes, s, c = boxes[keep], s[keep], c[keep]
            out.append(Instances(p.image_size, pred_boxes_resized=boxes, scores=s, region_codes=c))
        if self.pair_boxes > 0:
            out = self._add_pair_unions(features, out, refine)
        if self.context:
            fused = self._with_context(
                features, torch.cat([o.region_codes for o in out]), [o.pred_boxes_resized for o in out],
                [o.image_size for o in out],
            ).split([len(o) for o in out])
            out = [Instances(o.image_size, pred_boxes_resized=o.pred_boxes_resized, scores=o.scores, region_codes=f,
                             **({"pair_parts": o.pair_parts} if o.has("pair_parts") else {}))
                   for o, f in zip(out, fused)]
        return out
