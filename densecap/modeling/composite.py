"""A dense captioner and a whole-image captioner run as one model.

``DenseCapWithImageCaptioner(dense, captioner)`` answers the DenseCap eval contract (see
:class:`~densecap.modeling.meta_arch.DenseCapModel`) and adds to every image's dict the
``ImageCaptioner`` keys: ``image_caption`` (str), ``image_caption_logprob`` (float),
``image_captions`` (top-N ``{"caption", "logprob"}``), ``attention`` ((T, h, w) or None) and
``attention_cell``. This is how ``tools/infer.py --image-caption --caption-weights CKPT`` combines
a DenseCap checkpoint with a separately trained captioner (NIC or Show, Attend and Tell).
Eval only; attributes not found here (``beam_size``, ``roi_heads``, ``rpn``, ``vocab``, ...) are
those of the dense model, so test-time options apply to it unchanged.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

from torch import nn

from .capabilities import capabilities

_CAPTION_KEYS = ("image_caption", "image_caption_logprob", "image_captions", "attention", "attention_cell")


class DenseCapWithImageCaptioner(nn.Module):
    @property
    def capabilities(self) -> frozenset:
        """The dense model's and the captioner's (:mod:`densecap.modeling.capabilities`)."""
        return capabilities(self.dense) | capabilities(self.captioner)

    def __init__(self, dense: nn.Module, captioner: nn.Module) -> None:
        super().__init__()
        self.dense = dense
        self.captioner = captioner

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("dense"), name)

    def __setattr__(self, name: str, value) -> None:
        dense = self.__dict__.get("_modules", {}).get("dense")
        if dense is not None and name not in ("dense", "captioner", "training") and hasattr(dense, name):
            setattr(dense, name, value)  # test-time options (beam_size, ...) belong to the dense model
        else:
            super().__setattr__(name, value)

    def forward(self, batched_inputs: Sequence[Dict]) -> List[Dict]:
        if self.training:
            raise RuntimeError("DenseCapWithImageCaptioner is for inference; train the two models separately")
        dense_out = self.dense(batched_inputs)
        # the captioner ignores given_boxes / instances; it reads only the image
        caption_out = self.captioner([{k: v for k, v in x.items() if k != "given_boxes"} for x in batched_inputs])
        for d, c in zip(dense_out, caption_out):
            for k in _CAPTION_KEYS:
                if k in c:
                    d[k] = c[k]
        return dense_out
