"""The original-compatible DenseCap model (``MODEL.META_ARCHITECTURE: "DenseCapOriginal"``).

The same modules as :class:`densecap.modeling.DenseCapModel` (so training, checkpoints and
fine-tuning work unchanged) with the original's layer shapes, and an inference path that
reproduces the original ``run_model.lua`` / ``DenseCapModel:forward_test`` step by step:

1. ``model.transform`` (:class:`~densecap.modeling.transform.OriginalImageTransform`):
   ``image.scale`` to ``INPUT.MAX_SIZE`` on the longest side (``resize``, called by the predictor;
   torch/image's rounding), then BGR x 255 minus ``MODEL.PIXEL_MEAN`` (BGR, 103.939 116.779
   123.68), no std, no padding;
2. VGG-16 conv1_1 .. relu5_3 with ceil-mode 2x2 max pooling (as loadcaffe builds it;
   ``vgg16_original`` backbone, conv widths ``MODEL.ORIGINAL.CONV_WIDTHS``);
3. RPN: 3x3 conv + ReLU, 1x1 convs for 4k box deltas and 2k (positive, negative) scores per
   location; anchors ``(8.5 + 16 col, 8.5 + 16 row, w, h)`` in 1-based pixels, boxes by
   ``ApplyBoxTransform``; all k*H*W boxes clipped to the image, empty ones dropped, scored by the
   softmax probability of "positive", NMS ``MODEL.RPN.NMS_THRESH`` (0.7; +1 pixel areas) keeping
   up to ``MODEL.RPN.POST_NMS_TOPK_TEST`` (1000) proposals (``PRE_NMS_TOPK_TEST`` is not used:
   the original has none);
4. bilinear RoI sampling with ``BoxToAffine`` + stnbhwd's grid and sampler (7 x 7);
5. fc6/fc7 (ReLU, dropout off), objectness logit, box refinement applied to the proposals
   (unclipped), greedy LSTM decoding for ``MODEL.CAPTION.MAX_TOKENS`` steps (argmax of the raw
   logits, a caption ends at the first END; ``TEST.BEAM_SIZE`` > 1 uses the project's beam
   search instead, which the original's run_model.lua does not have);
6. final NMS ``MODEL.ROI.NMS_THRESH_TEST`` (0.3) on the refined boxes ranked by the objectness
   logit; no score threshold, no cap (``TEST.SCORE_THRESH`` / ``DETECTIONS_PER_IMAGE`` are
   applied afterwards only when set).

Output (eval): the eval contract of ``DenseCapModel`` with boxes ``[x, y, w, h]`` in ORIGINAL
image pixels: the original's (x, y, w, h) in the resized frame (1-based top-left pixel) mapped
with ``x0 = (x - 1) * W / W'``, ``w0 = w * W / W'`` (``transform.postprocess_original``), **not
clipped** to the image (the original does not clip after the final regression);
``scores`` = sigmoid of the original's objectness logit (same order: the final NMS order,
descending logit); ``objectness_logits`` the raw logits as the original reports them;
``boxes_resized_xywh`` the original's own numbers.

Training uses the project's DenseCap training path (the RPN's 2-way score is trained as one
logit ``positive - negative``, which is the same softmax); see ``DenseCapModel``.

Shapes: C: channels, Hf, Wf: feature map, A: k*Hf*Wf anchors, P: proposals, T: caption steps.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from densecap.data.tokenizer import END, PAD, START, Vocabulary
from densecap.structures import Instances

from ..backbone import BACKBONE_REGISTRY, Backbone
from ..meta_arch import META_ARCH_REGISTRY, DenseCapModel
from ..rpn import RPNHead
from ..transform import OriginalImageTransform
from . import ops

logger = logging.getLogger(__name__)

__all__ = ["VGG16OriginalBackbone", "OriginalRPNHead", "OriginalDenseCapModel"]


class VGG16OriginalBackbone(Backbone):
    """VGG-16 conv1_1 .. relu5_3 as loadcaffe builds it: 3x3 convs (pad 1) + ReLU, 2x2/2 max
    pooling in ceil mode after blocks 1-4 (pool5 is not part of the feature extractor).
    Stages for FREEZE_AT: the five conv blocks. ``widths``: output channels of the blocks."""

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512, 512)) -> None:
        super().__init__()
        depth = (2, 2, 3, 3, 3)
        stages, cin = [], 3
        for b, (n, w) in enumerate(zip(depth, widths)):
            layers: List[nn.Module] = []
            for _ in range(n):
                layers += [nn.Conv2d(cin, int(w), 3, padding=1), nn.ReLU(inplace=True)]
                cin = int(w)
            if b < 4:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_features = ["conv5"]
        self.out_channels = int(widths[-1])
        self.strides = {"conv5": 16}
        self.rpn_features = ["conv5"]
        self.roi_features = ["conv5"]
        self.size_divisibility = 1  # the original never pads

    def convs(self) -> List[nn.Conv2d]:
        return [m for m in self.stages.modules() if isinstance(m, nn.Conv2d)]

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        for stage in self.stages:
            x = stage(x)
        return {"conv5": x}


@BACKBONE_REGISTRY.register("vgg16_original")
def build_vgg16_original(cfg) -> Backbone:
    return VGG16OriginalBackbone(widths=list(cfg.MODEL.ORIGINAL.CONV_WIDTHS))


class OriginalRPNHead(RPNHead):
    """The original's RPN head: 2 scores (positive, negative) per anchor (``objectness`` has 2A
    output channels, anchor-major: channel 2a is anchor a's positive score) and 4 deltas per
    anchor (channel 4a + c). ``forward`` gives the project's one logit per anchor, positive
    minus negative (the same softmax)."""

    def __init__(self, *, in_channels: int, head_channels: int, num_anchors: int) -> None:
        super().__init__(in_channels=in_channels, head_channels=head_channels, num_anchors=num_anchors)
        self.objectness = nn.Conv2d(head_channels, 2 * num_anchors, 1)
        nn.init.normal_(self.objectness.weight, std=0.01)
        nn.init.zeros_(self.objectness.bias)
        self.num_anchors = int(num_anchors)

    def forward(self, features: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = torch.relu(self.conv(x))
            n = x.shape[0]
            s = self.objectness(t).permute(0, 2, 3, 1).reshape(n, -1, 2)  # N HWA 2
            logits.append(s[..., 0] - s[..., 1])  # N HWA
            deltas.append(self.deltas(t).permute(0, 2, 3, 1).reshape(n, -1, 4))  # N HWA 4
        return logits, deltas

    def forward_original(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """x (1, C, Hf, Wf) -> (deltas (A, 4), scores (A, 2)) in the original's anchor order
        (anchor slowest, then row, then column)."""
        t = torch.relu(self.conv(x))
        k = self.num_anchors
        _, _, h, w = t.shape
        d = self.deltas(t)[0].reshape(k, 4, h, w).permute(0, 2, 3, 1).reshape(-1, 4)  # A 4
        s = self.objectness(t)[0].reshape(k, 2, h, w).permute(0, 2, 3, 1).reshape(-1, 2)  # A 2
        return d, s


@META_ARCH_REGISTRY.register("DenseCapOriginal")
class OriginalDenseCapModel(DenseCapModel):
    """See the module docstring. Batched inputs as ``DenseCapModel``; at eval ``image`` is the
    float32 [0, 1] RGB image resized by ``model.transform.resize`` (the predictor does this) or a
    uint8 image already resized."""

    clip_boxes_to_image = False  # final boxes are not clipped: the original does not
    transform_class = OriginalImageTransform  # image.scale, BGR x 255 - mean, no padding; unclipped boxes out
    exact_sampler = False  # True: the sampler in the original's order of float operations (slower)
    # how the predictor reads image files for this model: as the original's image.load(path, 3)
    # (pixels as stored: no EXIF rotation; transparency ignored, not composited on white)
    image_read_options = {"exif_transpose": False, "alpha": "drop"}

    @classmethod
    def from_config(cls, cfg, vocab: Vocabulary) -> "OriginalDenseCapModel":
        model = super().from_config(cfg, vocab)
        rpn = model.rpn
        old = rpn.head
        rpn.head = OriginalRPNHead(in_channels=old.conv.in_channels, head_channels=old.conv.out_channels,
                                   num_anchors=rpn.anchor_generator.num_anchors)
        model.anchors_wh = torch.tensor(cfg.MODEL.RPN.ANCHORS, dtype=torch.float32).reshape(-1, 2)
        model.field_centers = tuple(float(v) for v in cfg.MODEL.ORIGINAL.FIELD_CENTERS)
        # the converted model is pretrained as a whole: FREEZE_AT holds without BACKBONE.WEIGHTS
        model.backbone.freeze(int(cfg.MODEL.BACKBONE.FREEZE_AT))
        model.image_size = int(cfg.INPUT.MAX_SIZE)
        return model

    # ---- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def inference(self, batched_inputs: Sequence[Dict]) -> List[Dict]:
        if any(x.get("given_boxes") is not None for x in batched_inputs) or self.image_caption_head is not None:
            return super().inference(batched_inputs)
        out = []
        for x in batched_inputs:
            images, sizes = self.preprocess_image([x])
            out.append(self.forward_original(images, x))
        return out

    def forward_original(self, image: Tensor, x: Dict, debug: bool = False) -> Dict:
        """One preprocessed image (1, 3, H', W') -> the eval output dict (see module docstring).

        The original captions all proposals and then keeps the final NMS's; the final NMS does
        not depend on the captions and greedy decoding is per region, so only the kept regions
        are captioned here (the same captions, a fraction of the work). ``debug=True`` captions
        every proposal as the original does and returns the intermediate tensors under
        ``"debug"``, named as in the original's dump (``rpn_boxes``, ``rpn_boxes_nms``, ...)."""
        H, W = int(image.shape[-2]), int(image.shape[-1])
        feats = self.backbone(image)["conv5"]  # 1 C Hf Wf
        dbg: Dict[str, Tensor] = {"conv_net2_out": feats}
        # RPN
        deltas, scores2 = self.rpn.head.forward_original(feats)  # A 4, A 2
        x0, y0, sx, sy = self.field_centers
        anchors = ops.make_anchors(feats.shape[-2], feats.shape[-1], self.anchors_wh, x0, y0, sx, sy)
        anchors = anchors.to(feats.device)  # A 4
        boxes = ops.apply_box_transform(anchors, deltas)  # A 4 xcycwh
        dbg.update(rpn_boxes=boxes, rpn_anchors=anchors, rpn_trans=deltas, rpn_scores=scores2)
        boxes, valid = ops.clip_boxes(boxes, H, W, "xcycwh")
        boxes, scores2 = boxes[valid], scores2[valid]
        e = ops.exp_f32(scores2)
        prob = torch.pow(e[:, 0] + e[:, 1], -1) * e[:, 0]  # softmax P(positive), as the original
        keep = ops.nms(ops.xcycwh_to_x1y1x2y2(boxes), prob, float(self.rpn.nms_thresh),
                       int(self.rpn.post_nms_topk) if int(self.rpn.post_nms_topk) > 0 else None)
        props = boxes[keep.to(boxes.device)]  # P 4 xcycwh
        dbg["rpn_boxes_nms"] = props
        # recognition
        roi = ops.bilinear_roi_pooling(feats[0], props, H, W, self.roi_heads.pooler.output_size,
                                       exact=self.exact_sampler)  # P C S S
        dbg["roi_features"] = roi
        rec = self.roi_heads.recognition
        codes = torch.relu(rec.fc7(torch.relu(rec.fc6(roi.flatten(1)))))  # P F
        obj = self.roi_heads.objectness(codes)  # P 1
        trans = self.roi_heads.box_deltas(codes)  # P 4
        final = ops.apply_box_transform(props, trans)  # P 4 xcycwh
        dbg.update(recog_codes=codes, objectness_pre_nms=obj, box_trans_pre_nms=trans, final_boxes_pre_nms=final)
        thr = float(self.roi_heads.nms_thresh)
        idx = ops.nms(ops.xcycwh_to_x1y1x2y2(final), obj[:, 0], thr) if thr > 0 else torch.arange(final.shape[0])
        idx = idx.to(final.device)
        if debug:
            tokens, lps = self._greedy_original(codes)  # P T (project ids, 0 after END), P
            dbg["lm_seq_pre_nms"] = tokens
            tokens, lps = tokens[idx], lps[idx]
        elif self.beam_size > 1:  # not the original's (run_model.lua decodes greedily): the project's beam search
            tokens, lps = self.caption_head.generate(codes[idx], beam_size=self.beam_size, max_len=self.max_caption_len,
                                                     length_alpha=self.length_alpha)
            tokens, lps = tokens.cpu(), lps.cpu()
        else:
            tokens, lps = self._greedy_original(codes[idx])
        final, logit, codes = final[idx].cpu(), obj[idx, 0].cpu(), codes[idx].cpu()
        tokens, lps = tokens.cpu(), lps.cpu()
        xywh = ops.xcycwh_to_xywh(final)  # the original's output, resized frame
        height = int(x.get("height", H))
        width = int(x.get("width", W))
        boxes_img = self.transform.postprocess_original(xywh, (H, W), height, width)  # P 4, not clipped
        score = torch.sigmoid(logit.double()).float()
        sel = torch.ones(len(score), dtype=torch.bool)
        if self.roi_heads.score_thresh > 0:  # the model's only score threshold
            sel &= score >= self.roi_heads.score_thresh
        sel_idx = torch.nonzero(sel).flatten()
        if self.roi_heads.detections_per_image > 0:
            sel_idx = sel_idx[: self.roi_heads.detections_per_image]
        inst = Instances(
            (height, width),
            pred_boxes=boxes_img[sel_idx],
            scores=score[sel_idx],
            objectness_logits=logit[sel_idx].float(),
            boxes_resized_xywh=xywh[sel_idx].float(),
            pred_captions=[self.vocab.decode_str(t.tolist()) for t in tokens[sel_idx]],
            pred_caption_tokens=tokens[sel_idx].long(),
            pred_caption_logprobs=lps[sel_idx].float(),
            region_codes=codes[sel_idx].float(),
        )
        out = {"instances": inst}
        if debug:
            out["debug"] = dbg
        return out

    def _greedy_original(self, codes: Tensor) -> Tuple[Tensor, Tensor]:
        """``LanguageModel:sample`` with ``sample_argmax``: step 0 reads ReLU(Linear(code)), step 1
        START, then the previous word, for ``max_caption_len`` steps; each word is the argmax of
        the raw output logits (PAD/START excluded). Returns project token ids (P, T), 0 from the
        first END on (the caption ends there, as ``decodeSequence``), and each caption's
        log-probability, END included (after T words: END's probability at step T+1, as
        ``CaptionDecoder.score``). Regions leave the batch once they said END."""
        head = self.caption_head
        n, T = int(codes.shape[0]), int(self.max_caption_len)
        dev = codes.device
        out = torch.zeros((n, T), dtype=torch.long, device=dev)
        logprobs = torch.zeros((n,), dtype=torch.float32, device=dev)
        if n == 0:
            return out, logprobs
        w_ih, b_ih = head.rnn.weight_ih_l0, head.rnn.bias_ih_l0
        w_hh, b_hh = head.rnn.weight_hh_l0, head.rnn.bias_hh_l0
        Hs = head.hidden_size

        def cell(xin, h, c):
            g = (head._rnn_linear(xin, "weight_ih_l0", w_ih, b_ih)
                 + head._rnn_linear(h, "weight_hh_l0", w_hh, b_hh))  # n 4H (i, f, g, o)
            i, f, gg, o = g.chunk(4, dim=1)
            i, f, o, gg = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(gg)
            c = f * c + i * gg
            return o * torch.tanh(c), c

        def logits_of(h):
            z = head.out(h)  # n' V
            z[:, PAD] = float("-inf")
            z[:, START] = float("-inf")
            return z

        h, c = cell(head.image_proj(codes), codes.new_zeros((n, Hs)), codes.new_zeros((n, Hs)))
        rows = torch.arange(n, device=dev)  # regions still decoding
        tok = torch.full((n,), START, dtype=torch.long, device=dev)
        for t in range(T + 1):
            h, c = cell(head.embed(tok), h, c)
            z = logits_of(h)
            lsm = torch.log_softmax(z, dim=1)
            if t == T:  # T words without END: the caption is closed with END's probability
                logprobs[rows] += lsm[:, END]
                break
            tok = z.argmax(dim=1)
            logprobs[rows] += lsm.gather(1, tok[:, None])[:, 0]
            ended = tok == END
            out[rows[~ended], t] = tok[~ended]
            if bool(ended.any()):
                keep = torch.nonzero(~ended).flatten()
                if keep.numel() == 0:
                    break
                rows, tok, h, c = rows[keep], tok[keep], h[keep], c[keep]
        return out, logprobs
