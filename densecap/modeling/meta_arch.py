"""The dense captioning model (FCLN): backbone -> RPN -> bilinear sampler -> recognition -> LSTM.

Registry ``META_ARCH_REGISTRY`` (``MODEL.META_ARCHITECTURE``); entries are built with
``cls.from_config(cfg, vocab)``.

Shapes: N: images, H, W: padded input size, R: regions, D: region code dim, T: caption tokens.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from densecap.data.tokenizer import Vocabulary
from densecap.structures import Instances, xywh_to_xyxy

from .backbone import Backbone, build_backbone
from .language_model import CaptionDecoder, build_caption_decoder
from .postprocess import to_original_frame
from .registry import Registry
from .roi_heads import DenseCapROIHeads
from .rpn import RPN

logger = logging.getLogger(__name__)

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """Whole models (``MODEL.META_ARCHITECTURE``), built by ``cls.from_config(cfg, vocab)``."""

__all__ = ["META_ARCH_REGISTRY", "DenseCapModel"]


@META_ARCH_REGISTRY.register("DenseCap")
class DenseCapModel(nn.Module):
    """Fully Convolutional Localization Network for dense captioning (Johnson et al. 2016).

    Input: ``batched_inputs``, a list of N dicts (what :class:`DenseCapDataset` yields):
        image      uint8 (3, H', W') RGB, already resized (longest side ``INPUT.MAX_SIZE``);
                   normalised (``PIXEL_MEAN/STD``) and padded to a common size inside the model
        height, width   int, original image size (pixels)
        scale      float, H' / height (default 1.0)
        instances  training only: ``Instances((H', W'), gt_boxes float32 (G, 4) xyxy in the
                   resized frame, gt_captions int64 (G, T) word ids, 0-padded, no START/END)``;
                   G may be 0 (boxes with zero width or height are ignored)
        given_boxes  optional, eval only: float32 (M, 4) [x, y, w, h] ORIGINAL pixels; the model
                   then skips the RPN and NMS and captions exactly these boxes, in this order
        (image_id, file_name, ... are passed through untouched)

    Training (``model.train()``): returns a dict of weighted scalar losses ``loss_rpn_cls``,
    ``loss_rpn_box``, ``loss_rpn_delta_l2`` (when its weight > 0), ``loss_cls``, ``loss_box``,
    ``loss_caption``; the total loss is their sum. Images without regions give 0 for the
    positives-based losses (still differentiable) while objectness learns from their negatives.

    Eval (``model.eval()``): returns a list of N dicts ``{"instances": Instances((height, width),
        pred_boxes float32 (R, 4) [x, y, w, h] ORIGINAL-image pixels, sorted by score descending
                   (given boxes: returned exactly as given, in their order),
        scores float32 (R,) sigmoid of the final objectness, in [0, 1],
        pred_captions list[str] (words joined by spaces, no special tokens),
        pred_caption_tokens int64 (R, T) word ids, 0-padded, no START/END (T = max caption length),
        pred_caption_logprobs float32 (R,) total log-probability of the caption, END included,
        region_codes float32 (R, D))}``, all tensors on the CPU.

    Eval options (set from the config at build time, attributes changeable afterwards):
    ``model.beam_size`` (TEST.BEAM_SIZE), ``model.length_alpha`` (TEST.LENGTH_ALPHA),
    ``model.max_caption_len`` (MODEL.CAPTION.MAX_TOKENS), ``model.roi_heads.nms_thresh``
    (MODEL.ROI.NMS_THRESH_TEST), ``model.roi_heads.score_thresh`` (TEST.SCORE_THRESH),
    ``model.roi_heads.detections_per_image`` (TEST.DETECTIONS_PER_IMAGE, 0 = all),
    ``model.rpn.nms_thresh``, ``model.rpn.pre_nms_topk``, ``model.rpn.post_nms_topk``
    (MODEL.RPN.*_TEST).
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        rpn: RPN,
        roi_heads: DenseCapROIHeads,
        caption_head: CaptionDecoder,
        vocab: Vocabulary,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        caption_loss_weight: float = 1.0,
        beam_size: int = 1,
        max_caption_len: int = 15,
        length_alpha: float = 0.0,
        embedding_head: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.caption_head = caption_head
        self.vocab = vocab
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.caption_loss_weight = float(caption_loss_weight)
        self.beam_size = int(beam_size)
        self.max_caption_len = int(max_caption_len)
        self.length_alpha = float(length_alpha)
        # optional joint region-sentence embedding for retrieval (MODEL.EMBEDDING.ENABLED)
        self.embedding_head = embedding_head

    @classmethod
    def from_config(cls, cfg, vocab: Vocabulary) -> "DenseCapModel":
        backbone = build_backbone(cfg)
        rpn = RPN.from_config(cfg, backbone)
        roi_heads = DenseCapROIHeads.from_config(cfg, backbone)
        caption_head = build_caption_decoder(cfg, vocab, roi_heads.recognition.out_dim)
        embedding_head = None
        if cfg.MODEL.EMBEDDING.ENABLED:
            from densecap.retrieval.embedding import build_embedding_head

            embedding_head = build_embedding_head(cfg, vocab, roi_heads.recognition.out_dim)
        return cls(
            backbone=backbone, rpn=rpn, roi_heads=roi_heads, caption_head=caption_head, vocab=vocab,
            pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD,
            caption_loss_weight=cfg.MODEL.CAPTION.LOSS_WEIGHT, beam_size=cfg.TEST.BEAM_SIZE,
            max_caption_len=cfg.MODEL.CAPTION.MAX_TOKENS, length_alpha=cfg.TEST.LENGTH_ALPHA,
            embedding_head=embedding_head,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---- input ------------------------------------------------------------------------------
    def preprocess_image(self, batched_inputs: Sequence[Dict]) -> Tuple[Tensor, List[Tuple[int, int]]]:
        """Normalise and pad (bottom/right, zeros after normalisation) to a multiple of the
        backbone's ``size_divisibility``. Returns images (N, 3, H, W) and [(H'_i, W'_i)]."""
        imgs = [x["image"].to(self.device, non_blocking=True) for x in batched_inputs]
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in imgs]
        div = max(int(self.backbone.size_divisibility), 1)
        H = -(-max(s[0] for s in sizes) // div) * div
        W = -(-max(s[1] for s in sizes) // div) * div
        batch = torch.zeros((len(imgs), 3, H, W), dtype=torch.float32, device=self.device)  # N 3 H W
        for i, im in enumerate(imgs):
            batch[i, :, : im.shape[-2], : im.shape[-1]] = (im.float() - self.pixel_mean) / self.pixel_std
        return batch, sizes

    def _gt_instances(self, batched_inputs: Sequence[Dict]) -> List[Instances]:
        out = []
        for x in batched_inputs:
            inst = x["instances"].to(self.device)
            b = inst.gt_boxes
            ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) & torch.isfinite(b).all(dim=1)
            if not bool(ok.all()):
                logger.warning("image %s: ignoring %d empty ground-truth boxes", x.get("image_id"), int((~ok).sum()))
                inst = inst[ok]
            out.append(inst)
        return out

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, batched_inputs: Sequence[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images, sizes = self.preprocess_image(batched_inputs)
        features = self.backbone(images)
        gt = self._gt_instances(batched_inputs)
        samples, losses = self.rpn(features, sizes, gt)
        roi_losses, codes, captions = self.roi_heads.forward_train(features, samples)
        losses.update(roi_losses)
        losses["loss_caption"] = self.caption_loss_weight * self.caption_head.loss(codes, captions)
        if self.embedding_head is not None:
            losses.update(self.embedding_head(codes, captions))  # {"loss_embed"}; codes detached inside
        return losses

    @torch.no_grad()
    def inference(self, batched_inputs: Sequence[Dict]) -> List[Dict]:
        """Detect and caption (see the class docstring for the output)."""
        images, sizes = self.preprocess_image(batched_inputs)
        features = self.backbone(images)
        given = ["given_boxes" in x and x["given_boxes"] is not None for x in batched_inputs]
        proposals: List[Instances] = [None] * len(batched_inputs)  # type: ignore[list-item]
        if not all(given):
            rpn_props, _ = self.rpn(features, sizes)
            for i, g in enumerate(given):
                if not g:
                    proposals[i] = rpn_props[i]
        for i, x in enumerate(batched_inputs):
            if given[i]:
                gb = torch.as_tensor(x["given_boxes"], dtype=torch.float32, device=self.device).reshape(-1, 4)
                proposals[i] = Instances(sizes[i], proposal_boxes=xywh_to_xyxy(gb) * float(x.get("scale", 1.0)))
        dets = self.roi_heads.forward_test(features, proposals, refine=[not g for g in given])
        codes = torch.cat([d.region_codes for d in dets], dim=0)  # R D
        tokens, logprobs = self.caption_head.generate(
            codes, beam_size=self.beam_size, max_len=self.max_caption_len, length_alpha=self.length_alpha
        )  # R T, R
        results, start = [], 0
        for i, (x, d) in enumerate(zip(batched_inputs, dets)):
            n = len(d)
            tok = tokens[start : start + n].cpu()
            scale = float(x.get("scale", 1.0))
            height = int(x.get("height", round(sizes[i][0] / scale)))
            width = int(x.get("width", round(sizes[i][1] / scale)))
            if given[i]:
                boxes = torch.as_tensor(x["given_boxes"], dtype=torch.float32).reshape(-1, 4).clone().cpu()
            else:
                boxes = to_original_frame(d.pred_boxes, scale, height, width).cpu()
            inst = Instances(
                (height, width),
                pred_boxes=boxes,
                scores=d.scores.float().cpu(),
                pred_captions=[self.vocab.decode_str(t.tolist()) for t in tok],
                pred_caption_tokens=tok.long(),
                pred_caption_logprobs=logprobs[start : start + n].float().cpu(),
                region_codes=d.region_codes.float().cpu(),
            )
            start += n
            results.append({"instances": inst})
        return results
