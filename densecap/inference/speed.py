"""Test-time speed levers applied to a built model: :func:`optimize_for_inference`.

C: channels of a convolution's output.

* ``TEST.FOLD_BN`` (default True): every frozen batch norm (``FrozenBatchNorm2d``, fixed
  statistics) that directly follows a convolution is folded into that convolution's weights and
  bias, and replaced by ``nn.Identity``. The network computes the same function with one pass
  over each activation map fewer (the ResNet-50 has 53 of them); outputs agree to float rounding.
  Only two patterns are folded, both of which apply the norm to the convolution's output and
  nothing else: a ``convN`` / ``bnN`` pair of children (torchvision's ``Bottleneck``) and a
  ``Conv2d`` followed by the norm inside an ``nn.Sequential`` (the stem, ``downsample``).
* ``TEST.CHANNELS_LAST`` (default True): the backbone's weights and its input image batch in
  ``torch.channels_last`` memory format (NHWC), which oneDNN's convolutions run faster on the CPU
  once the batch norms are folded; the feature maps it returns are NHWC too. Same function, outputs
  agree to float rounding.
* ``TEST.QUANTIZE`` (default ``""``; ``"int8"``): dynamic int8 quantization
  (``torch.ao.quantization.quantize_dynamic``) of the ``nn.Linear`` layers: the recognition MLP,
  the box and objectness heads and the caption decoder's projections. Weights are stored in int8,
  activations quantized on the fly. Outputs change slightly (scores, boxes and some captions).
  The LSTM's recurrent step runs as plain matrix products of its float weights (see
  ``densecap.modeling.language_model``), so it stays float.

Both change the model in place: apply them to a model used only for inference (the predictor
does, when it is built from a config).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

logger = logging.getLogger(__name__)

__all__ = ["QUANTIZE_CHOICES", "fold_frozen_batchnorm", "to_channels_last", "quantize_int8", "optimize_for_inference"]

QUANTIZE_CHOICES = ("", "int8")


def _fold_into(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> None:
    """conv <- bn(conv(x)): W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps)."""
    with torch.no_grad():
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()  # C
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
        new_bias = (bias - bn.running_mean) * scale + bn.bias  # C
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)
        else:
            conv.bias.copy_(new_bias)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and type(bn) is FrozenBatchNorm2d
            and conv.out_channels == bn.weight.numel() and conv.groups >= 1)


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold frozen batch norms into the convolutions before them (see the module docstring), in
    place. Returns the number folded."""
    n = 0
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for a, b in zip(names, names[1:]):
                if _foldable(children[a], children[b]):
                    _fold_into(children[a], children[b])
                    setattr(parent, b, nn.Identity())
                    n += 1
            continue
        for name, child in children.items():
            if name.startswith("bn") and _foldable(children.get("conv" + name[2:]), child):
                _fold_into(children["conv" + name[2:]], child)
                setattr(parent, name, nn.Identity())
                n += 1
    return n


def _channels_last_input(module: nn.Module, args):
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def to_channels_last(backbone: nn.Module) -> None:
    """Weights and (through a forward pre-hook) input images of ``backbone`` in channels_last."""
    backbone.to(memory_format=torch.channels_last)
    backbone.register_forward_pre_hook(_channels_last_input)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the model's ``nn.Linear`` layers, in place; returns the model."""
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def optimize_for_inference(model: nn.Module, cfg=None, *, fold_bn: Optional[bool] = None,
                           channels_last: Optional[bool] = None, quantize: Optional[str] = None) -> nn.Module:
    """Apply the test-time levers a config asks for (``TEST.FOLD_BN``, ``TEST.CHANNELS_LAST``,
    ``TEST.QUANTIZE``; the keyword arguments override it) to ``model`` in eval mode, in place;
    returns the model. A second call leaves the model as the first one made it."""
    test = getattr(cfg, "TEST", None) if cfg is not None else None
    if fold_bn is None:
        fold_bn = bool(getattr(test, "FOLD_BN", True)) if test is not None else True
    if channels_last is None:
        channels_last = bool(getattr(test, "CHANNELS_LAST", True)) if test is not None else True
    if quantize is None:
        quantize = str(getattr(test, "QUANTIZE", "")) if test is not None else ""
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"TEST.QUANTIZE must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    model.eval()
    if getattr(model, "_inference_levers", None) is not None:  # already applied
        return model
    folded = fold_frozen_batchnorm(model) if fold_bn else 0
    backbone = getattr(model, "backbone", None)
    channels_last = bool(channels_last and isinstance(backbone, nn.Module))
    if channels_last:
        to_channels_last(backbone)
    if quantize == "int8":
        quantize_int8(model)
    model._inference_levers = {"fold_bn": folded, "channels_last": channels_last, "quantize": quantize}
    logger.info("inference levers: %d frozen batch norms folded, channels_last=%s, quantize=%r",
                folded, channels_last, quantize or "off")
    return model
