"""Visual context for the region captioner (``MODEL.ROI_HEADS.CONTEXT``).

After Yang et al., "Dense Captioning with Joint Inference and Visual Context" (CVPR 2017): the
language model reads, besides the region's own code, codes of the region's surroundings. Each
context is a box that goes through the *same* sampler and recognition network (fc6/fc7) as the
regions, so it adds no parameters to the recognition network:

* ``"global"``: the whole (unpadded) image, ``[0, 0, W', H']`` in input pixels: one code per image,
  shared by all its regions (the paper's global context feature);
* ``"union"``: the region's neighbourhood: its box enlarged ``CONTEXT_UNION_SCALE`` times (2 by
  default) about its centre and clipped to the image. The neighbours are the objects that fall in
  that enlarged box, and the box is the union of the region with them: a fixed geometric rule, so
  training (where it is computed for the RPN's positives) and test (the final detections) see the
  same kind of box, whatever the proposal set.

Fusion is by concatenation (early fusion): the fused code ``[region; global; union]`` (K, F * (1 +
n_contexts)) is what the caption decoder's input projection reads (at step 0 and, with
``CODE_EVERY_STEP``, at every step), and what the model returns as ``region_codes`` (so the
retrieval embedding, the index and exact search see it too). Objectness and box refinement read the
region's own code, so detection is computed exactly as without context. Context codes are only
computed for the regions that are captioned (training: the positives; test: the detections
after NMS).

Shapes: N: images, K: regions, F: recognition code size, C: channels, S: pooled size.
"""
from __future__ import annotations

import logging
from typing import Callable, List, Sequence, Tuple, Union

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["CONTEXT_KINDS", "parse_context", "whole_image_boxes", "enlarged_boxes", "fuse_context"]

CONTEXT_KINDS = ("global", "union")


def parse_context(value: Union[str, Sequence[str], None]) -> Tuple[str, ...]:
    """``MODEL.ROI_HEADS.CONTEXT`` -> the context kinds in canonical order.

    Accepts "" / "none" (no context), one kind ("global", "union"), several joined by "," or "+"
    ("global,union"), or a list of kinds. Unknown kinds are an error naming them.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        parts = [p.strip().lower() for p in value.replace("+", ",").split(",")]
    else:
        parts = [str(p).strip().lower() for p in value]
    parts = [p for p in parts if p and p != "none"]
    bad = [p for p in parts if p not in CONTEXT_KINDS]
    if bad:
        raise ValueError(f"MODEL.ROI_HEADS.CONTEXT: unknown context {bad}; choose from {list(CONTEXT_KINDS)}")
    return tuple(k for k in CONTEXT_KINDS if k in parts)


def whole_image_boxes(image_sizes: Sequence[Tuple[int, int]], like: Tensor) -> List[Tensor]:
    """One xyxy box (1, 4) per image covering its unpadded input ``(h, w)``."""
    return [like.new_tensor([[0.0, 0.0, float(w), float(h)]]) for h, w in image_sizes]


def enlarged_boxes(boxes: Tensor, scale: float, image_size: Tuple[int, int]) -> Tensor:
    """xyxy boxes (K, 4) scaled by ``scale`` about their centres, clipped to the image (h, w)."""
    h, w = image_size
    c = (boxes[:, :2] + boxes[:, 2:]) * 0.5  # K 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (0.5 * float(scale))  # K 2
    out = torch.cat([c - half, c + half], dim=1)  # K 4
    lo = out.new_zeros(4)
    hi = out.new_tensor([float(w), float(h), float(w), float(h)])
    return torch.max(torch.min(out, hi), lo)


def fuse_context(
    encode: Callable[[List[Tensor]], Tensor],
    codes: Tensor,
    box_lists: Sequence[Tensor],
    image_sizes: Sequence[Tuple[int, int]],
    kinds: Sequence[str],
    union_scale: float = 2.0,
) -> Tensor:
    """Concatenate the region codes (K, F) with their context codes -> (K, F * (1 + len(kinds))).

    ``encode(box_lists)`` -> (sum K_i, F): the sampler + recognition network on N box lists (xyxy
    input pixels). ``box_lists``: the N images' region boxes, in the order of ``codes``.
    """
    if not kinds:
        return codes
    counts = torch.tensor([int(b.shape[0]) for b in box_lists], device=codes.device)  # N
    parts = [codes]
    for kind in kinds:
        if kind == "global":
            g = encode(whole_image_boxes(image_sizes, codes))  # N F
            parts.append(g.repeat_interleave(counts, dim=0))  # K F
        elif kind == "union":
            if codes.shape[0] == 0:
                parts.append(codes.new_zeros(codes.shape))
                continue
            ub = [enlarged_boxes(b.detach().to(codes.dtype), union_scale, s) for b, s in zip(box_lists, image_sizes)]
            parts.append(encode(ub))  # K F
        else:  # parse_context keeps this unreachable
            raise ValueError(f"unknown context {kind!r}")
    return torch.cat(parts, dim=1)
