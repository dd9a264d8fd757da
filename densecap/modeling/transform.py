"""The image/box transform: images into the network's frame, boxes back out to original pixels.

Like torchvision's ``GeneralizedRCNNTransform``, one object owns both directions:

* in:  :meth:`DenseCapTransform.resize` (an RGB uint8 (H, W, 3) image -> the resized image and its
  ``scale``; the predictor calls it) and :meth:`DenseCapTransform.forward` (a batch of resized
  ``batched_inputs`` -> one normalised, padded tensor and the images' resized sizes);
* out: :meth:`DenseCapTransform.postprocess` (boxes xyxy in the resized frame -> ``[x, y, w, h]``
  in ORIGINAL image pixels, clipped to the original image: the only clip on the way out).

Inside the model boxes are xyxy in the resized frame (``pred_boxes_resized``); ``pred_boxes`` is
only ever the user-facing ``[x, y, w, h]`` in original pixels.

:class:`OriginalImageTransform` is the original (Lua/Torch7) model's transform: torch/image's
``image.scale``, BGR x 255 minus the VGG mean, no padding to a size divisibility, and the
original's box mapping, not clipped.

Shapes: N: images, H, W: padded batch size, H', W': an image's resized size, P: boxes.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from densecap.data.image_io import resize_longest_side
from densecap.structures import clip_xyxy, xywh_to_xyxy, xyxy_to_xywh

logger = logging.getLogger(__name__)

__all__ = ["DenseCapTransform", "OriginalImageTransform"]


class DenseCapTransform(nn.Module):
    """Resize (longest side ``max_size``), normalise (``(x - pixel_mean) / pixel_std``), pad
    (bottom/right, zeros after normalisation) to a multiple of ``size_divisibility``; map boxes
    back to original pixels. Holds no parameters and no checkpoint state (its buffers are not
    persistent)."""

    def __init__(
        self,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        max_size: int = 720,
        size_divisibility: int = 1,
    ) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.max_size = int(max_size)
        self.size_divisibility = max(int(size_divisibility), 1)

    @classmethod
    def from_config(cls, cfg, *, size_divisibility: int = 1) -> "DenseCapTransform":
        return cls(pixel_mean=list(cfg.MODEL.PIXEL_MEAN), pixel_std=list(cfg.MODEL.PIXEL_STD),
                   max_size=int(cfg.INPUT.MAX_SIZE), size_divisibility=size_divisibility)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---- in ---------------------------------------------------------------------------------
    def resize(self, image: np.ndarray, max_size: Optional[int] = None) -> Tuple[np.ndarray, float]:
        """uint8 (H, W, 3) RGB -> (uint8 (H', W', 3), H' / H), longest side ``max_size``."""
        return resize_longest_side(image, int(max_size or self.max_size))

    def _to_float(self, image: Tensor) -> Tensor:
        """One resized image (3, H', W') as the float the normalisation reads."""
        return image.float()

    def _padded_size(self, sizes: List[Tuple[int, int]]) -> Tuple[int, int]:
        div = self.size_divisibility
        return -(-max(s[0] for s in sizes) // div) * div, -(-max(s[1] for s in sizes) // div) * div

    def forward(self, batched_inputs: Sequence[Dict]) -> Tuple[Tensor, List[Tuple[int, int]]]:
        """The ``image`` (3, H', W') of each input -> images (N, 3, H, W) float32 normalised and
        padded, and [(H'_i, W'_i)]."""
        imgs = [self._to_float(x["image"].to(self.device, non_blocking=True)) for x in batched_inputs]
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in imgs]
        H, W = self._padded_size(sizes)
        batch = torch.zeros((len(imgs), 3, H, W), dtype=torch.float32, device=self.device)  # N 3 H W
        for i, im in enumerate(imgs):
            batch[i, :, : im.shape[-2], : im.shape[-1]] = (im - self.pixel_mean) / self.pixel_std
        return batch, sizes

    def boxes_to_resized(self, boxes_xywh: Tensor, scale: float) -> Tensor:
        """User boxes ``[x, y, w, h]`` original pixels (P, 4) -> xyxy in the resized frame."""
        return xywh_to_xyxy(boxes_xywh.float().reshape(-1, 4)) * float(scale)

    # ---- out --------------------------------------------------------------------------------
    def postprocess(self, boxes_resized: Tensor, scale: float, height: int, width: int) -> Tensor:
        """xyxy (P, 4) in the resized frame -> float32 ``[x, y, w, h]`` (P, 4) in original pixels
        (divided by ``scale``, clipped to ``(width, height)``)."""
        b = boxes_resized.detach().float() / float(scale)
        b = clip_xyxy(b, float(height), float(width))
        return xyxy_to_xywh(b).to(torch.float32)


class OriginalImageTransform(DenseCapTransform):
    """The original's input and output conventions (``run_model.lua``):

    * resize: ``image.scale(img, max_size)`` with torch/image's rounding -> float32 [0, 1] RGB;
    * normalise: RGB -> BGR, x 255 (float [0, 1] input; uint8 input is used as it is), minus
      ``PIXEL_MEAN`` (BGR), divided by ``PIXEL_STD`` (1 for the original); padded (zeros) only
      when a batch mixes sizes, never to a size divisibility;
    * out: :meth:`postprocess_original`, the original's 1-based resized-frame ``(x, y, w, h)``
      -> original pixels, **not clipped** (the original does not clip after the final regression).
    """

    def __init__(self, *, pixel_mean: Sequence[float], pixel_std: Sequence[float], max_size: int = 720) -> None:
        super().__init__(pixel_mean=pixel_mean, pixel_std=pixel_std, max_size=max_size, size_divisibility=1)

    @classmethod
    def from_config(cls, cfg, *, size_divisibility: int = 1) -> "OriginalImageTransform":
        return cls(pixel_mean=list(cfg.MODEL.PIXEL_MEAN), pixel_std=list(cfg.MODEL.PIXEL_STD),
                   max_size=int(cfg.INPUT.MAX_SIZE))

    def resize(self, image: np.ndarray, max_size: Optional[int] = None) -> Tuple[np.ndarray, float]:
        """uint8 (H, W, 3) RGB -> (float32 (H', W', 3) RGB in [0, 1], H' / H)."""
        from .original import ops

        out = ops.torch7_image_scale(image, int(max_size or self.max_size))
        return out, out.shape[0] / float(image.shape[0])

    def _to_float(self, image: Tensor) -> Tensor:
        im = image.float() * 255.0 if image.is_floating_point() else image.float()
        return im.flip(0)  # RGB -> BGR

    def postprocess_original(self, boxes_xywh: Tensor, resized_hw: Tuple[int, int], height: int, width: int) -> Tensor:
        """The original's (x, y, w, h) (P, 4) in the resized frame (1-based top-left pixel) ->
        float32 ``[x, y, w, h]`` original pixels: ``x0 = (x - 1) * W / W'``, ``w0 = w * W / W'``;
        not clipped."""
        from .original import ops

        return torch.from_numpy(ops.original_to_image_pixels(boxes_xywh.numpy(), tuple(resized_hw), (height, width))).float()
