"""How an image-caption head sits on a backbone: shared by the standalone ``ImageCaptioner`` and by
``DenseCapModel`` when it captions whole images too (``MODEL.IMAGE_CAPTION.ENABLED``).

Shapes: B: images, K: captions of an image, T: caption tokens, C: channels, H, W: feature grid,
N: captions returned per image.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from densecap.data.grounding import cell_centres_in_boxes, grounded_words
from densecap.data.tokenizer import PAD, Vocabulary

from .base import ImageCaptionHead

__all__ = [
    "pick_feature",
    "feature_valid_mask",
    "training_captions",
    "cell_centres_in_boxes",
    "grounded_words",
    "word_region_masks",
    "caption_losses",
    "caption_outputs",
    "CAPTION_OUTPUT_KEYS",
]

# the per-image keys a whole-image captioner adds to a model's eval output
CAPTION_OUTPUT_KEYS = ("image_caption", "image_caption_logprob", "image_captions", "attention", "attention_cell")


def pick_feature(backbone) -> str:
    """The backbone output the caption head reads: the one whose stride is closest to 16."""
    return min(backbone.out_features, key=lambda n: (abs(backbone.strides[n] - 16), backbone.strides[n]))


def feature_valid_mask(sizes: Tensor, stride: int, shape: Tuple[int, int]) -> Tensor:
    """(B, H, W) bool: feature cells whose receptive centre lies on the (unpadded) image.
    ``sizes`` (B, 2) int: each image's (height, width) in input pixels before padding."""
    H, W = shape
    hs = torch.clamp(torch.ceil(sizes[:, 0].float() / stride).long(), 1, H)  # B
    ws = torch.clamp(torch.ceil(sizes[:, 1].float() / stride).long(), 1, W)  # B
    ys = torch.arange(H)[None, :, None]
    xs = torch.arange(W)[None, None, :]
    return (ys < hs[:, None, None]) & (xs < ws[:, None, None])


def training_captions(feats: Tensor, mask: Tensor, caps: Sequence[Tensor], mode: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The (features, mask, captions, source image index) one training step sees.

    feats (B, C, H, W), mask (B, H, W), caps: B tensors (K_b, T) of word ids (K_b >= 1).
    ``mode`` "sample": one of each image's captions drawn at random -> captions (B, T');
    "all": every caption, features repeated -> (sum K_b, C, H, W), captions (sum K_b, T').
    T' = the longest caption of the step (trailing all-PAD columns are cut); ``src`` (B' ,) int64:
    the image each caption belongs to.
    """
    src = torch.arange(len(caps), device=feats.device)  # B
    if mode == "sample":
        picks = [int(torch.randint(len(c), ())) for c in caps]
        captions = torch.stack([c[k] for c, k in zip(caps, picks)])  # B T
    elif mode == "all":
        counts = torch.tensor([len(c) for c in caps], device=feats.device)
        feats = feats.repeat_interleave(counts, dim=0)  # BK C H W
        mask = mask.repeat_interleave(counts, dim=0)  # BK H W
        src = src.repeat_interleave(counts)  # BK
        captions = torch.cat(list(caps), 0)  # BK T
    else:
        raise ValueError(f"MODEL.IMAGE_CAPTION.TRAIN_CAPTIONS must be 'sample' or 'all', got {mode!r}")
    t = int((captions != PAD).sum(1).max().clamp(min=1))
    return feats, mask, captions[:, :t], src


def word_region_masks(captions: Tensor, gt_boxes: Tensor, gt_captions: Tensor,
                      stride: Union[float, Tuple[float, float]], shape: Tuple[int, int]) -> Tensor:
    """Where each word of an image's caption is, from the image's ground-truth regions.

    captions (K, T) word ids of whole-image captions; gt_boxes (G, 4) xyxy in input pixels and
    gt_captions (G, Tr) word ids of the image's region captions; ``shape`` = (H, W) of a feature
    grid with cells of ``stride`` pixels. For every grounded word (:func:`grounded_words`) the mask
    holds the cells whose centres lie in the regions that name it. Returns float (K, T, H, W), all
    zero for words that are not grounded.
    """
    H, W = shape
    K, T = captions.shape
    if gt_boxes.numel() == 0:
        return torch.zeros((K, T, H, W), device=captions.device)
    inside = cell_centres_in_boxes(gt_boxes, stride, shape)  # G H W
    contains, grounded = grounded_words(captions, gt_captions)  # K T G, K T
    masks = (contains.float().flatten(0, 1) @ inside.float().flatten(1)).view(K, T, H, W) > 0  # K T H W
    return (masks & grounded[:, :, None, None]).float()


def caption_losses(
    head: ImageCaptionHead,
    feats: Tensor,
    mask: Tensor,
    caps: Sequence[Optional[Tensor]],
    mode: str,
    *,
    gt_instances: Optional[Sequence] = None,
    stride: float = 1.0,
) -> Dict[str, Tensor]:
    """The head's ``loss_image_caption*`` dict over the images that have captions.

    With ``gt_instances`` (per image ``gt_boxes`` xyxy in input pixels, ``gt_captions``) and a head
    that supervises its attention (``attention_supervision_weight > 0``), each grounded word's
    region mask (:func:`word_region_masks`, feature cells of ``stride`` pixels) is passed on.

    ``caps[b]`` is image b's (K, T) captions, or None / an empty tensor when it has none (a
    dense captioning image outside the caption file). When no image of the batch has one, the
    head still runs (on image 0 with a one-word caption) and its losses are multiplied by 0: every
    rank of a DDP job then reports the same loss keys, and the step stays differentiable.
    """
    keep = [b for b, c in enumerate(caps) if c is not None and len(c) > 0 and bool((c != PAD).any())]
    supervise = gt_instances is not None and float(getattr(head, "attention_supervision_weight", 0.0)) > 0
    if not keep:
        dummy = torch.full((1, 1), min(4, head.vocab_size - 1), dtype=torch.long, device=feats.device)  # a word id
        regions = torch.zeros((1, 1) + tuple(feats.shape[-2:]), device=feats.device) if supervise else None
        return {k: v * 0.0 for k, v in head(feats[:1], dummy, mask[:1], word_regions=regions).items()}
    idx = torch.tensor(keep, device=feats.device)
    f, m, captions, src = training_captions(feats[idx], mask[idx], [caps[b].to(feats.device) for b in keep], mode)
    regions = None
    if supervise:
        # src is sorted (each image's captions are consecutive): one mask computation per image
        regions = torch.cat([
            word_region_masks(captions[src == k], gt_instances[b].gt_boxes, gt_instances[b].gt_captions,
                              stride, tuple(feats.shape[-2:]))
            for k, b in enumerate(keep)
        ])  # B' T H W
    return head(f, captions, m, word_regions=regions)


@torch.no_grad()
def caption_outputs(
    head: ImageCaptionHead,
    vocab: Vocabulary,
    feats: Tensor,
    mask: Tensor,
    stride: float,
    *,
    beam_size: int,
    max_len: int,
    num_captions: int = 1,
    length_penalty: float = 0.0,
    block_repeats: bool = False,
) -> List[Dict]:
    """Caption B images; one dict per image with the ``CAPTION_OUTPUT_KEYS``::

        image_caption          str    the best caption (words joined by spaces)
        image_caption_logprob  float  its total log-probability (END included when it finished)
        image_captions         [{"caption": str, "logprob": float}] the top N
        attention              float (T, h, w) the attention map behind each word of the best
                               caption (T = its number of words), or None for NIC
        attention_cell         (cell_h, cell_w) input (resized-image) pixels covered by one
                               attention cell, the grid starting at the top-left; None for NIC
    """
    out = head.generate(
        feats, mask, beam_size=beam_size, max_len=max_len, num_captions=num_captions,
        length_penalty=length_penalty, block_repeats=block_repeats,
    )
    tokens, logprobs, att = out["tokens"].cpu(), out["logprobs"].cpu(), out["attention"]  # B N T, B N
    cell = None
    if att is not None:  # input pixels covered by one attention cell (grid from the top-left)
        cell = (stride * feats.shape[-2] / att.shape[-2], stride * feats.shape[-1] / att.shape[-1])
    results = []
    for i in range(tokens.shape[0]):
        caps = [
            {"caption": vocab.decode_str(tokens[i, n].tolist()), "logprob": float(logprobs[i, n])}
            for n in range(tokens.shape[1])
        ]
        n_words = int((tokens[i, 0] != PAD).sum())
        results.append({
            "image_caption": caps[0]["caption"],
            "image_caption_logprob": caps[0]["logprob"],
            "image_captions": caps,
            "attention": None if att is None else att[i, :n_words].float().cpu(),
            "attention_cell": cell,
        })
    return results
