"""The dense captioning model (FCLN): backbone -> RPN -> bilinear sampler -> recognition -> LSTM.

Registry ``META_ARCH_REGISTRY`` (``MODEL.META_ARCHITECTURE``); entries are built with
``cls.from_config(cfg, vocab)``.

Shapes: N: images, H, W: padded input size, R: regions, D: region code dim, T: caption tokens,
K: whole-image captions of an image.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from densecap.data.tokenizer import Vocabulary
from densecap.structures import Instances

from .backbone import Backbone, build_backbone
from .capabilities import ATTENTION_MAPS, IMAGE_CAPTION, REGION_EMBEDDINGS, REGIONS, image_caption_capabilities
from .image_caption.attach import caption_losses, caption_outputs, feature_valid_mask, pick_feature
from .joint_inference import JointBoxRefiner
from .language_model import CaptionDecoder, build_caption_decoder
from .registry import Registry
from .roi_heads import DenseCapROIHeads
from .rpn import RPN
from .transform import DenseCapTransform

logger = logging.getLogger(__name__)

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """Whole models (``MODEL.META_ARCHITECTURE``), built by ``cls.from_config(cfg, vocab)``."""

__all__ = ["META_ARCH_REGISTRY", "DenseCapModel"]


@META_ARCH_REGISTRY.register("DenseCap")
class DenseCapModel(nn.Module):
    """Fully Convolutional Localization Network for dense captioning (Johnson et al. 2016).

    Input: ``batched_inputs``, a list of N dicts (what :class:`DenseCapDataset` yields):
        image      uint8 (3, H', W') RGB, already resized (longest side ``INPUT.MAX_SIZE``, by
                   ``model.transform.resize`` or the dataset); normalised (``PIXEL_MEAN/STD``) and
                   padded to a common size inside the model by ``model.transform``
        height, width   int, original image size (pixels)
        scale      float, H' / height (default 1.0)
        instances  training only: ``Instances((H', W'), gt_boxes float32 (G, 4) xyxy in the
                   resized frame, gt_captions int64 (G, T) word ids, 0-padded, no START/END)``;
                   G may be 0 (boxes with zero width or height are ignored)
        given_boxes  optional, eval only: float32 (M, 4) [x, y, w, h] ORIGINAL pixels; the model
                   then skips the RPN and NMS and captions exactly these boxes, in this order
        image_captions  optional, training with an image-caption head only: int64 (K, T) the
                   image's whole-image captions, word ids, 0-padded, no START/END (K may be 0:
                   the image then trains the regions only)
        (image_id, file_name, ... are passed through untouched)

    Training (``model.train()``): returns a dict of weighted scalar losses ``loss_rpn_cls``,
    ``loss_rpn_box``, ``loss_rpn_delta_l2`` (when its weight > 0), ``loss_cls``, ``loss_box``,
    ``loss_caption`` (and ``loss_box_joint`` with MODEL.ROI_HEADS.JOINT_INFERENCE); the total loss is
    their sum. Images without regions give 0 for the
    positives-based losses (still differentiable) while objectness learns from their negatives.
    With an image-caption head (``MODEL.IMAGE_CAPTION.ENABLED``, the same backbone feature map):
    also ``loss_image_caption`` (+ ``loss_image_caption_doubly_stochastic`` for attention heads,
    ``loss_image_caption_reinforce`` / ``_entropy`` for hard attention, and
    ``loss_image_caption_attention`` when MODEL.IMAGE_CAPTION.ATTENTION_SUPERVISION_WEIGHT > 0: the
    attention supervised by the ``instances``' boxes) over the batch's images that have
    ``image_captions`` (0 when none has). With the embedding head: ``loss_embed``.

    Eval (``model.eval()``): returns a list of N dicts ``{"instances": Instances((height, width),
        pred_boxes float32 (R, 4) [x, y, w, h] ORIGINAL-image pixels, sorted by score descending,
                   clipped to the image (given boxes: returned exactly as given, in their order),
        scores float32 (R,) sigmoid of the final objectness, in [0, 1], >= ``TEST.SCORE_THRESH``
                   (applied here, once; given boxes are never thresholded),
        pred_captions list[str] (words joined by spaces, no special tokens),
        pred_caption_tokens int64 (R, T) word ids, 0-padded, no START/END (T = max caption length),
        pred_caption_logprobs float32 (R,) total log-probability of the caption, END included,
        region_codes float32 (R, D),
        pair_parts int64 (R, 2), only with MODEL.ROI_HEADS.PAIR_BOXES: the positions of a pair
                   region's two detections in the same result, -1 for other regions)}``, all
                   tensors on the CPU. With MODEL.ROI_HEADS.PAIR_RELATIONS a pair region's caption
                   is composed from its parts' captions (``densecap.modeling.pair_captions``).
    With an image-caption head each dict also holds the whole-image caption:
    ``image_caption`` str, ``image_caption_logprob`` float, ``image_captions`` the top N
    ``[{"caption", "logprob"}]``, ``attention`` float (T, h, w) per-word attention maps (None for
    NIC) and ``attention_cell`` (cell_h, cell_w) resized-input pixels per attention cell (see
    ``densecap.modeling.image_caption.attach.caption_outputs``).

    Eval options (set from the config at build time, attributes changeable afterwards):
    ``model.beam_size`` (TEST.BEAM_SIZE), ``model.length_alpha`` (TEST.LENGTH_ALPHA),
    ``model.max_caption_len`` (MODEL.CAPTION.MAX_TOKENS), ``model.roi_heads.nms_thresh``
    (MODEL.ROI.NMS_THRESH_TEST), ``model.roi_heads.score_thresh`` (TEST.SCORE_THRESH),
    ``model.roi_heads.detections_per_image`` (TEST.DETECTIONS_PER_IMAGE, 0 = all),
    ``model.rpn.nms_thresh``, ``model.rpn.pre_nms_topk``, ``model.rpn.post_nms_topk``
    (MODEL.RPN.*_TEST), ``model.roi_heads.pair_boxes`` (MODEL.ROI_HEADS.PAIR_BOXES); with an
    image-caption head ``caption_beam_size``, ``caption_max_len``, ``num_captions``,
    ``length_penalty``, ``block_repeats`` (MODEL.IMAGE_CAPTION.*).

    Frames: ``model.transform`` (:class:`~densecap.modeling.transform.DenseCapTransform`) resizes
    and normalises on the way in and maps boxes back to original pixels on the way out (the one
    clip to the original image). Inside the model boxes are xyxy in the resized input frame, named
    ``proposal_boxes`` / ``pred_boxes_resized`` (clipped to the resized input before the final NMS);
    ``pred_boxes`` is only the output above.

    ``model.capabilities`` (:mod:`densecap.modeling.capabilities`): ``regions``, plus
    ``image_caption`` / ``attention_maps`` with an image-caption head (attention heads) and
    ``region_embeddings`` with the embedding head.
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
        image_caption_head: Optional[nn.Module] = None,
        image_caption_train: str = "sample",
        caption_beam_size: int = 3,
        caption_max_len: int = 20,
        num_captions: int = 1,
        length_penalty: float = 0.0,
        block_repeats: bool = False,
        joint_box_head: Optional[JointBoxRefiner] = None,
        transform: Optional[DenseCapTransform] = None,
        pair_geometry=None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.caption_head = caption_head
        self.vocab = vocab
        self.transform = transform if transform is not None else DenseCapTransform(
            pixel_mean=pixel_mean, pixel_std=pixel_std, size_divisibility=backbone.size_divisibility)
        self.caption_loss_weight = float(caption_loss_weight)
        self.beam_size = int(beam_size)
        self.max_caption_len = int(max_caption_len)
        self.length_alpha = float(length_alpha)
        # optional joint region-sentence embedding for retrieval (MODEL.EMBEDDING.ENABLED)
        self.embedding_head = embedding_head
        # optional whole-image caption head on the same backbone (MODEL.IMAGE_CAPTION.ENABLED)
        self.image_caption_head = image_caption_head
        self.image_caption_feature = pick_feature(backbone) if image_caption_head is not None else None
        if image_caption_train not in ("sample", "all"):
            raise ValueError(f"MODEL.IMAGE_CAPTION.TRAIN_CAPTIONS must be 'sample' or 'all', got {image_caption_train!r}")
        self.image_caption_train = image_caption_train
        self.caption_beam_size = int(caption_beam_size)
        self.caption_max_len = int(caption_max_len)
        self.num_captions = int(num_captions)
        self.length_penalty = float(length_penalty)
        self.block_repeats = bool(block_repeats)
        # joint inference (MODEL.ROI_HEADS.JOINT_INFERENCE): the caption's final state refines the box
        self.joint_box_head = joint_box_head
        # test time (MODEL.ROI_HEADS.PAIR_RELATIONS): pair regions' captions composed from their parts
        self.pair_geometry = pair_geometry

    @property
    def capabilities(self) -> frozenset:
        caps = {REGIONS} | image_caption_capabilities(self.image_caption_head)
        if getattr(self, "embedding_head", None) is not None:
            caps.add(REGION_EMBEDDINGS)
        return frozenset(caps)

    @classmethod
    def capabilities_from_config(cls, cfg) -> frozenset:
        ic = cfg.MODEL.IMAGE_CAPTION
        caps = {REGIONS}
        if ic.ENABLED:
            caps |= {IMAGE_CAPTION} | ({ATTENTION_MAPS} if ic.HEAD != "nic" else set())
        if cfg.MODEL.EMBEDDING.ENABLED:
            caps.add(REGION_EMBEDDINGS)
        return frozenset(caps)

    transform_class = DenseCapTransform  # the input/output transform this model builds (from_config)

    @classmethod
    def from_config(cls, cfg, vocab: Vocabulary) -> "DenseCapModel":
        backbone = build_backbone(cfg)
        rpn = RPN.from_config(cfg, backbone)
        roi_heads = DenseCapROIHeads.from_config(cfg, backbone)
        caption_head = build_caption_decoder(cfg, vocab, roi_heads.code_dim)
        embedding_head = None
        if cfg.MODEL.EMBEDDING.ENABLED:
            from .embedding import build_embedding_head

            embedding_head = build_embedding_head(cfg, vocab, roi_heads.code_dim)
        ic = cfg.MODEL.IMAGE_CAPTION
        image_caption_head = None
        if ic.ENABLED:
            from .image_caption import build_image_caption_head

            image_caption_head = build_image_caption_head(cfg, vocab, backbone.out_channels)
        return cls(
            backbone=backbone, rpn=rpn, roi_heads=roi_heads, caption_head=caption_head, vocab=vocab,
            pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD,
            caption_loss_weight=cfg.MODEL.CAPTION.LOSS_WEIGHT, beam_size=cfg.TEST.BEAM_SIZE,
            max_caption_len=cfg.MODEL.CAPTION.MAX_TOKENS, length_alpha=cfg.TEST.LENGTH_ALPHA,
            embedding_head=embedding_head, image_caption_head=image_caption_head,
            image_caption_train=ic.TRAIN_CAPTIONS, caption_beam_size=ic.BEAM_SIZE, caption_max_len=ic.MAX_TOKENS,
            num_captions=ic.NUM_CAPTIONS, length_penalty=ic.LENGTH_PENALTY, block_repeats=ic.BLOCK_REPEATS,
            joint_box_head=JointBoxRefiner(
                hidden_size=cfg.MODEL.CAPTION.HIDDEN_SIZE, loss_weight=cfg.MODEL.ROI.LOSS_WEIGHT_BOX,
                smooth_l1_beta=cfg.MODEL.ROI.SMOOTH_L1_BETA,
            ) if cfg.MODEL.ROI_HEADS.JOINT_INFERENCE else None,
            transform=cls.transform_class.from_config(cfg, size_divisibility=backbone.size_divisibility),
            pair_geometry=_pair_geometry(cfg),
        )

    @property
    def device(self) -> torch.device:
        return self.transform.device

    @property
    def pixel_mean(self) -> Tensor:
        return self.transform.pixel_mean

    @property
    def pixel_std(self) -> Tensor:
        return self.transform.pixel_std

    # ---- input ------------------------------------------------------------------------------
    def resize_image(self, image, size: Optional[int] = None):
        """``self.transform.resize``: an RGB uint8 (H, W, 3) image -> (resized image, scale)."""
        return self.transform.resize(image, size)

    def preprocess_image(self, batched_inputs: Sequence[Dict]) -> Tuple[Tensor, List[Tuple[int, int]]]:
        """``self.transform(batched_inputs)``: images (N, 3, H, W) normalised and padded, and
        [(H'_i, W'_i)]."""
        return self.transform(batched_inputs)

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
        if self.joint_box_head is None:
            roi_losses, codes, captions = self.roi_heads.forward_train(features, samples)
        else:
            roi_losses, codes, captions, pos = self.roi_heads.forward_train(features, samples, return_boxes=True)
        losses.update(roi_losses)
        losses["loss_caption"] = self.caption_loss_weight * self.caption_head.loss(codes, captions)
        if self.joint_box_head is not None:
            hidden = self.caption_head.final_hidden(codes, captions)  # P H
            losses["loss_box_joint"] = self.joint_box_head.loss(hidden, pos["refined"], pos["gt"])
        if self.embedding_head is not None:
            losses.update(self.embedding_head(codes, captions))  # {"loss_embed"}; codes detached inside
        if self.image_caption_head is not None:
            feats, mask = self._image_caption_features(features, sizes)
            caps = [x.get("image_captions") for x in batched_inputs]
            stride = float(self.backbone.strides[self.image_caption_feature])
            losses.update(caption_losses(self.image_caption_head, feats, mask, caps, self.image_caption_train,
                                         gt_instances=gt, stride=stride))
        return losses

    def _image_caption_features(self, features: Dict[str, Tensor], sizes: List[Tuple[int, int]]) -> Tuple[Tensor, Tensor]:
        """The caption head's feature map (N, C, h, w) and its valid mask (N, h, w) bool."""
        name = self.image_caption_feature
        feats = features[name]  # N C h w
        hw = torch.tensor(sizes, dtype=torch.long).reshape(-1, 2)  # N 2
        mask = feature_valid_mask(hw, self.backbone.strides[name], feats.shape[-2:]).to(feats.device)  # N h w
        return feats, mask

    @torch.no_grad()
    def image_caption_attention(self, batched_inputs: Sequence[Dict]) -> List[Optional[Dict]]:
        """The attention the image-caption head uses to read each image's own ``image_captions``
        (K, T) (teacher forcing, eval mode): per image ``{"captions": [str] * K, "attention": float
        (K, T, h, w) (0 after each caption's words), "attention_cell": (cell_h, cell_w)}`` in
        resized-input pixels, or None when the image has no captions or the head no attention."""
        head = self.image_caption_head
        if head is None or not getattr(head, "has_attention", False):
            return [None] * len(batched_inputs)
        was_training = self.training
        self.eval()
        try:
            return self._image_caption_attention(batched_inputs)
        finally:
            self.train(was_training)

    def _image_caption_attention(self, batched_inputs: Sequence[Dict]) -> List[Optional[Dict]]:
        head = self.image_caption_head
        images, sizes = self.preprocess_image(batched_inputs)
        feats, mask = self._image_caption_features(self.backbone(images), sizes)  # N C h w, N h w
        stride = float(self.backbone.strides[self.image_caption_feature])
        out: List[Optional[Dict]] = []
        for i, x in enumerate(batched_inputs):
            caps = x.get("image_captions")
            if caps is None or len(caps) == 0:
                out.append(None)
                continue
            caps = caps.to(self.device)  # K T
            k = caps.shape[0]
            att = head.attention_maps(feats[i : i + 1].expand(k, -1, -1, -1), caps, mask[i : i + 1].expand(k, -1, -1))  # K T h w
            cell = (stride * feats.shape[-2] / att.shape[-2], stride * feats.shape[-1] / att.shape[-1])
            out.append({"captions": [self.vocab.decode_str(c.tolist()) for c in caps.cpu()], "attention": att.float().cpu(),
                        "attention_cell": cell})
        return out

    def _compose_pair_captions(self, dets: List[Instances], codes: Tensor, tokens: Tensor, logprobs: Tensor):
        """Replace the captions of pair regions (``pair_parts`` >= 0) by the best composition of
        their parts' captions (:func:`~densecap.modeling.pair_captions.compose_pair_captions`)."""
        from .pair_captions import compose_pair_captions

        rows, caps, boxes = [], [], []
        start = 0
        for d in dets:
            if d.has("pair_parts"):
                for k in torch.nonzero((d.pair_parts >= 0).all(dim=1)).flatten().tolist():
                    a, b = (start + int(v) for v in d.pair_parts[k])
                    rows.append(start + k)
                    caps.append(tuple(self.vocab.decode_str(tokens[r].tolist()) for r in (a, b)))
                    boxes.append(torch.stack([d.pred_boxes_resized[int(d.pair_parts[k, 0])],
                                              d.pred_boxes_resized[int(d.pair_parts[k, 1])]]))
            start += len(d)
        if not rows:
            return tokens, logprobs
        new, lls = compose_pair_captions(self.caption_head, self.vocab, self.pair_geometry, codes[rows], caps,
                                         torch.stack(boxes), 2 * self.max_caption_len + 2)  # two names, a relation
        width = max([tokens.shape[1]] + [len(r) for r in new])
        if width > tokens.shape[1]:
            tokens = torch.cat([tokens, tokens.new_zeros((tokens.shape[0], width - tokens.shape[1]))], dim=1)
        tokens, logprobs = tokens.clone(), logprobs.clone()
        for r, t, ll in zip(rows, new, lls):
            if t:
                tokens[r] = 0
                tokens[r, : len(t)] = torch.as_tensor(t, dtype=tokens.dtype)
                logprobs[r] = ll
        return tokens, logprobs

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
                proposals[i] = Instances(sizes[i], proposal_boxes=self.transform.boxes_to_resized(gb, float(x.get("scale", 1.0))))
        dets = self.roi_heads.forward_test(features, proposals, refine=[not g for g in given])
        codes = torch.cat([d.region_codes for d in dets], dim=0)  # R D
        tokens, logprobs = self.caption_head.generate(
            codes, beam_size=self.beam_size, max_len=self.max_caption_len, length_alpha=self.length_alpha
        )  # R T, R
        if self.pair_geometry is not None:  # pair regions: captions composed from their two parts
            tokens, logprobs = self._compose_pair_captions(dets, codes, tokens, logprobs)
        if self.joint_box_head is not None:  # joint inference: each caption's final state moves its box
            hidden = self.caption_head.final_hidden(codes, tokens).split([len(d) for d in dets])  # R H
            dets = [d if g else Instances(d.image_size, pred_boxes_resized=self.joint_box_head.refine(h, d.pred_boxes_resized,
                                                                                                   d.image_size),
                                          scores=d.scores, region_codes=d.region_codes)
                    for d, h, g in zip(dets, hidden, given)]
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
                boxes = self.transform.postprocess(d.pred_boxes_resized, scale, height, width).cpu()
            inst = Instances(
                (height, width),
                pred_boxes=boxes,
                scores=d.scores.float().cpu(),
                pred_captions=[self.vocab.decode_str(t.tolist()) for t in tok],
                pred_caption_tokens=tok.long(),
                pred_caption_logprobs=logprobs[start : start + n].float().cpu(),
                region_codes=d.region_codes.float().cpu(),
            )
            if d.has("pair_parts"):  # MODEL.ROI_HEADS.PAIR_BOXES: each pair region's two detections (-1: none)
                inst.pair_parts = d.pair_parts.cpu()
            start += n
            results.append({"instances": inst})
        if self.image_caption_head is not None:
            feats, mask = self._image_caption_features(features, sizes)
            captions = caption_outputs(
                self.image_caption_head, self.vocab, feats, mask, float(self.backbone.strides[self.image_caption_feature]),
                beam_size=self.caption_beam_size, max_len=self.caption_max_len, num_captions=self.num_captions,
                length_penalty=self.length_penalty, block_repeats=self.block_repeats,
            )
            for r, c in zip(results, captions):
                r.update(c)
        return results


def _pair_geometry(cfg):
    """The relation geometry model of ``MODEL.ROI_HEADS.PAIR_RELATIONS`` (needs ``PAIR_BOXES``)."""
    path = cfg.MODEL.ROI_HEADS.PAIR_RELATIONS
    if not path:
        return None
    if cfg.MODEL.ROI_HEADS.PAIR_BOXES <= 0:
        raise ValueError("MODEL.ROI_HEADS.PAIR_RELATIONS composes the captions of pair regions: "
                         "set MODEL.ROI_HEADS.PAIR_BOXES > 0 too")
    from .relation_geometry import RelationGeometry

    return RelationGeometry.load(path)
