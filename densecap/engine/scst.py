"""Self-critical sequence training (Rennie et al. 2017) of the whole-image caption head
(``SOLVER.SCST.ENABLED``), a second training stage after cross-entropy (``MODEL.WEIGHTS``).

Per training step, for the step's images that have whole-image captions:

1. the backbone features (no gradient: the backbone, and with it the dense captioner of a joint
   model, stay as the cross-entropy stage left them; only the caption head learns);
2. the greedy caption of each image (eval mode, no gradient): the baseline ``b``;
3. ``SOLVER.SCST.NUM_SAMPLES`` captions sampled from the head (train mode) with their
   log-probabilities ``log p(w^s)``;
4. reward ``r`` = CIDEr-D of each caption against the image's references, with the document
   frequencies of the *training* references (computed once, :class:`densecap.evaluation.cider.CiderD`);
5. ``loss_scst = -(r(w^s) - b) * log p(w^s)``, mean over the samples
   (:func:`densecap.modeling.image_caption.losses.self_critical_loss`), times ``SOLVER.SCST.LOSS_WEIGHT``.

The step also logs ``scst_reward_sample`` and ``scst_reward_greedy`` (the mean CIDEr-D of the
samples and of the greedy captions, not losses: the trainer sums only ``loss_*``).

``SOLVER.SCST.REGIONS``: the same for the region captioner of a DenseCap model, in the same step:
the RPN's positives (the regions the cross-entropy stage captions) are captioned greedily and by
sampling from their region codes, and rewarded by CIDEr-D against the region's references (the
captions of the ground-truth boxes that overlap its matched box at IoU >= 0.7, as the DenseCap
evaluation merges them), the df over the training split's region captions: ``loss_scst_regions``.
Detection is not trained in this stage.

Single process only (the step calls the model's parts directly, outside DistributedDataParallel).

Shapes: B: images, M: sampled captions, P: positive regions, T: tokens.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from densecap.data.tokenizer import END, PAD, START
from densecap.evaluation.cider import CiderD
from densecap.modeling.decoding import sample_captions
from densecap.modeling.image_caption.losses import self_critical_loss
from densecap.structures.boxes import iou_xyxy_np
from densecap.utils import comm

from .checkpoint import unwrap

logger = logging.getLogger(__name__)

__all__ = ["SelfCriticalStep", "training_references", "region_training_references"]


def _datasets(dataset) -> List:
    return list(getattr(dataset, "datasets", [dataset]))  # ConcatDataset or one dataset


def training_references(dataset) -> List[List[str]]:
    """Every training image's whole-image reference captions (strings), for the document frequencies."""
    out: List[List[str]] = []
    for d in _datasets(dataset):
        for i in range(len(d)):
            if hasattr(d, "image_caption_tokens"):  # a dense captioning dataset with whole-image captions
                refs = [" ".join(t) for t in d.image_caption_tokens(i)]
            else:  # a caption dataset (ImageCaptioner)
                refs = list(d.gt_captions_str(i))
            if refs:
                out.append(refs)
    return out


def region_training_references(dataset) -> List[List[str]]:
    """Every training image's region captions (one document per image), for the region reward's df."""
    return [list(d.gt_captions_str(i)) for d in _datasets(dataset) for i in range(len(d)) if len(d.gt_captions_str(i))]


class SelfCriticalStep:
    """``step(model, batch) -> loss dict`` replacing ``model(batch)`` in the training loop."""

    def __init__(self, cfg, dataset, vocab) -> None:
        s = cfg.SOLVER.SCST
        if comm.get_world_size() > 1:
            raise ValueError("SOLVER.SCST.ENABLED: self-critical training runs in one process only")
        self.vocab = vocab
        self.num_samples = int(s.NUM_SAMPLES)
        if self.num_samples < 1:
            raise ValueError(f"SOLVER.SCST.NUM_SAMPLES must be >= 1, got {self.num_samples}")
        self.loss_weight = float(s.LOSS_WEIGHT)
        self.max_len = int(s.MAX_LEN or cfg.MODEL.IMAGE_CAPTION.MAX_TOKENS)
        self.regions = bool(s.REGIONS)
        self.region_max_len = int(cfg.MODEL.CAPTION.MAX_TOKENS)
        self.images = cfg.MODEL.IMAGE_CAPTION.ENABLED or cfg.MODEL.META_ARCHITECTURE == "ImageCaptioner"
        if not self.images and not self.regions:
            raise ValueError("SOLVER.SCST.ENABLED needs a whole-image caption head (MODEL.IMAGE_CAPTION.ENABLED) "
                             "or SOLVER.SCST.REGIONS")
        self.cider = None
        if self.images:
            corpus = training_references(dataset)
            if not corpus:
                raise ValueError(f"SOLVER.SCST.ENABLED: the training data {cfg.DATASETS.TRAIN} has no whole-image captions")
            self.cider = CiderD(corpus)
            logger.info("self-critical training: CIDEr-D document frequencies of %d training images' captions", len(corpus))
        self.region_cider = None
        if self.regions:
            self.region_cider = CiderD(region_training_references(dataset))

    def _decode(self, tokens: Tensor) -> List[str]:
        return [self.vocab.decode_str(t.tolist()) for t in tokens.cpu()]

    def __call__(self, model, batch: Sequence[Dict]) -> Dict[str, Tensor]:
        m = unwrap(model)
        was = m.training
        m.eval()  # backbone features and greedy baselines deterministic (no dropout)
        try:
            with torch.no_grad():
                images, sizes = m.preprocess_image(batch)
                features = m.backbone(images)
        finally:
            m.train(was)
        out: Dict[str, Tensor] = {}
        if self.images:
            out.update(self._image_step(m, batch, features, sizes))
        if self.regions:
            out.update(self._region_step(m, batch, features, sizes))
        return out

    # ---- whole-image captions ---------------------------------------------------------------
    def _image_step(self, m, batch, features, sizes) -> Dict[str, Tensor]:
        if hasattr(m, "image_caption_head"):  # DenseCapModel with a whole-image head
            head = m.image_caption_head
            feats, mask = m._image_caption_features(features, sizes)
            refs_key = "gt_image_captions"
        else:  # ImageCaptioner
            from densecap.modeling.image_caption.attach import feature_valid_mask

            head = m.head
            feats = features[m.in_feature]
            hw = torch.tensor(sizes, dtype=torch.long).reshape(-1, 2)
            mask = feature_valid_mask(hw, m.backbone.strides[m.in_feature], feats.shape[-2:]).to(feats.device)
            refs_key = "gt_captions"
        keep = [i for i, x in enumerate(batch) if x.get(refs_key)]
        if not keep:
            zero = sum(p.sum() * 0.0 for p in head.parameters() if p.requires_grad)
            return {"loss_scst": zero, "scst_reward_sample": zero.detach(), "scst_reward_greedy": zero.detach()}
        idx = torch.tensor(keep, device=feats.device)
        feats, mask = feats[idx], mask[idx]
        refs = [list(batch[i][refs_key]) for i in keep]
        was = head.training
        head.eval()
        try:
            with torch.no_grad():
                greedy, _ = head.sample(feats, mask, self.max_len, greedy=True)  # B T
        finally:
            head.train(was)
        base = self.cider.score(self._decode(greedy), refs)  # B
        k = self.num_samples
        tokens, logp = head.sample(feats.repeat_interleave(k, 0), mask.repeat_interleave(k, 0), self.max_len)  # BK T, BK
        rep_refs = [r for r in refs for _ in range(k)]
        reward = self.cider.score(self._decode(tokens), rep_refs)  # BK
        r = torch.as_tensor(reward, dtype=torch.float32, device=logp.device)
        b = torch.as_tensor(base, dtype=torch.float32, device=logp.device).repeat_interleave(k)
        return {
            "loss_scst": self.loss_weight * self_critical_loss(logp, r, b),
            "scst_reward_sample": r.mean().detach(),
            "scst_reward_greedy": b.mean().detach(),
        }

    # ---- region captions ------------------------------------------------------------------------
    def _region_step(self, m, batch, features, sizes) -> Dict[str, Tensor]:
        gt = m._gt_instances(batch)
        with torch.no_grad():  # the RPN's sample and the positives' codes, as the CE stage sees them
            was = m.training
            m.train()
            samples, _ = m.rpn(features, sizes, gt)
            _, codes, captions = m.roi_heads.forward_train(features, samples)
            m.train(was)
        rh = m.roi_heads
        refs = self._region_refs(gt, samples, int(rh.batch_size_per_image * rh.positive_fraction))
        head = m.caption_head
        if codes.shape[0] == 0:
            zero = sum(p.sum() * 0.0 for p in head.parameters() if p.requires_grad)
            return {"loss_scst_regions": zero, "scst_region_reward_sample": zero.detach(),
                    "scst_region_reward_greedy": zero.detach()}
        with torch.no_grad():
            greedy, _ = head.generate(codes, beam_size=1, max_len=self.region_max_len)  # P T
        base = self.region_cider.score(self._decode(greedy), refs)
        k = self.num_samples
        tokens, logp = sample_region_captions(head, codes.repeat_interleave(k, 0), self.region_max_len)
        reward = self.region_cider.score(self._decode(tokens), [r for r in refs for _ in range(k)])
        r = torch.as_tensor(reward, dtype=torch.float32, device=logp.device)
        b = torch.as_tensor(base, dtype=torch.float32, device=logp.device).repeat_interleave(k)
        return {
            "loss_scst_regions": self.loss_weight * self_critical_loss(logp, r, b),
            "scst_region_reward_sample": r.mean().detach(),
            "scst_region_reward_greedy": b.mean().detach(),
        }

    def _region_refs(self, gt, samples, max_pos: int) -> List[List[str]]:
        """Per positive (in the order forward_train returns them): the captions of its matched GT box
        and of every GT box overlapping that one at IoU >= 0.7."""
        refs: List[List[str]] = []
        for g, s in zip(gt, samples):
            n_pos = min(int((s.gt_objectness == 1).sum()), max_pos)  # as DenseCapROIHeads.forward_train
            if n_pos == 0:
                continue
            boxes = g.gt_boxes.detach().cpu().numpy()
            caps = [self.vocab.decode_str(c.tolist()) for c in g.gt_captions.cpu()]
            groups = iou_xyxy_np(boxes, boxes) >= 0.7
            matched = s.gt_boxes[:n_pos].detach().cpu().numpy()
            iou = iou_xyxy_np(matched, boxes)
            for row in iou:
                j = int(row.argmax())
                refs.append([caps[q] for q in groups[j].nonzero()[0]])
        return refs


def sample_region_captions(head, codes: Tensor, max_len: int):
    """Sampled region captions with their log-probabilities (graph kept): tokens int64 (N, max_len)
    0-padded and logprobs (N,) incl. END; at most ``max_len`` words then END (as generate)."""
    start = torch.full((codes.shape[0],), START, dtype=torch.long, device=codes.device)
    return sample_captions(head.decode_step, head.init_state(codes), start, max_tokens=int(max_len),
                           end_token=END, pad_token=PAD)
