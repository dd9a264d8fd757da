"""Matrix products against weights prepacked in oneDNN's blocked layout, for inference on the CPU.

B: rows (regions, tokens); I, O: a layer's input and output features.

The test-time lever ``TEST.PACKED_LINEAR`` (see :mod:`densecap.inference.speed`) gives each plain
float32 ``nn.Linear`` of a model a :class:`PackedWeight` (attribute ``packed_weight``) and routes its
forward through :func:`packed_linear`; the caption decoder's greedy step multiplies through the
output layer's packed weight the same way. The packed copy is made from the layer's own weight at its first use and remade whenever
that weight changes (another tensor, or an in-place update), so the layer always computes with its
current weights; it is not part of the state dict, and a copy of the model (``copy.deepcopy``)
packs its own.

Why: for the shapes of this model, oneDNN's product against a prepacked weight is faster than
the default BLAS call on the machines measured (AMD EPYC, 1 thread: (100 x 512) x (512 x 10,500)
10.3 vs 15.4 ms; (1000 x 12,544) x (12,544 x 1,024) 233 vs 271 ms); the result differs from
``F.linear`` by float rounding (summation order), about 2x the rounding of the BLAS product.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PackedWeight", "packed_linear", "packing_available"]


def packing_available() -> bool:
    """Whether this torch build has the oneDNN (mkldnn) CPU kernels the packed products use."""
    return bool(torch.backends.mkldnn.is_available())


class PackedWeight:
    """The oneDNN-packed copy of one weight (O, I), made on demand. Copying the holder (deepcopy,
    pickling) gives an empty one: packed tensors have no storage to copy, and the copy's weight
    is another tensor anyway."""

    def __init__(self) -> None:
        self._key = None
        self._packed: Optional[Tensor] = None

    def get(self, weight: Tensor, batch_hint: int) -> Tensor:
        key = (weight.data_ptr(), weight._version, tuple(weight.shape))
        if self._key != key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(int(batch_hint), 1))
            self._key = key
        return self._packed

    def __deepcopy__(self, memo) -> "PackedWeight":
        return PackedWeight()

    def __getstate__(self):
        return {}

    def __setstate__(self, state) -> None:
        self.__init__()


def packed_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], packed: PackedWeight) -> Tensor:
    """``F.linear(x, weight, bias)`` (x: (..., I) -> (..., O)) through the packed weight when that
    applies (CPU, float32, no autograd, no autocast, rows to multiply); ``F.linear`` otherwise."""
    if (x.dim() >= 2 and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu") and x.numel() > 0):
        rows = x.reshape(-1, x.shape[-1]).contiguous()  # B I
        out = torch.ops.mkldnn._linear_pointwise(rows, packed.get(weight, rows.shape[0]), bias, "none", [], "")
        return out if x.dim() == 2 else out.view(*x.shape[:-1], out.shape[-1])
    return F.linear(x, weight, bias)
