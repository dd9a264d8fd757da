"""Test-time speed levers applied to a built model: :func:`optimize_for_inference`.

C: channels of a convolution's output.

* ``TEST.FOLD_BN`` (default True): every frozen batch norm (``FrozenBatchNorm2d``, fixed
  statistics) that directly follows a convolution is folded into that convolution's weights and
  bias, and replaced by ``nn.Identity``. The network computes the same function with one pass
  over each activation map fewer (the ResNet-50 has 53 of them); outputs agree to float rounding.
  Only two patterns are folded, both of which apply the norm to the convolution's output and
  nothing else: a ``convN`` / ``bnN`` pair of children (torchvision's ``Bottleneck``) and a
  ``Conv2d`` followed by the norm inside an ``nn.Sequential`` (the stem, ``downsample``).
* ``TEST.WINOGRAD`` (default True): every 3x3, stride-1, ungrouped, undilated float32 convolution
  with at least 16 input channels (ResNet's bottleneck 3x3s, the FPN's output convolutions, the RPN
  head's, VGG's) runs NNPACK's Winograd algorithm (``torch._nnpack_spatial_convolution``: F(6x6, 3x3)
  tiles, about 4x fewer multiplications than the direct convolution) when the model runs without
  autograd on the CPU and the output map has at least ``WINOGRAD_MIN_PIXELS`` x threads^2 pixels
  (below that, or with gradients, under autocast, on other devices, or where NNPACK is not
  built, the layer's own convolution runs). Same function: it differs from the direct convolution
  by float rounding (about 1e-5 of the output's range, against 1e-6 for the direct one). NNPACK wants
  NCHW maps, so when it runs a backbone convolution only the backbone's stem is put in channels_last
  (see ``TEST.CHANNELS_LAST``).
* ``TEST.CHANNELS_LAST`` (default True): the backbone's weights and its input image batch in
  ``torch.channels_last`` memory format (NHWC), which oneDNN's convolutions run faster on the CPU
  once the batch norms are folded; the feature maps it returns are NHWC too. Same function, outputs
  agree to float rounding. When ``TEST.WINOGRAD`` runs convolutions of the backbone, only the
  backbone's first stage before them runs channels_last (ResNet's stem: its 7x7 convolution and max
  pool are 2.5x faster on NHWC maps) and hands NCHW maps on; converting the maps between the two
  layouts around every Winograd convolution costs more than channels_last gains.
* ``TEST.PACKED_LINEAR`` (default True): every plain float32 ``nn.Linear`` (the recognition MLP,
  the score and box heads, the caption decoders' projections and output layers) and the caption
  LSTM's (GRU's) recurrent weights multiply through a copy of their weight prepacked in oneDNN's
  blocked layout (:mod:`densecap.modeling.packed_linear`), made at first use and remade when the
  weight changes; without autograd on the CPU only. Same function, outputs agree to float rounding.
  Faster on the machines measured (AMD EPYC, 1 thread: the 10,500-word output layer 1.5x, fc6
  1.15x); costs memory for the packed copies (about 80 MB for the R50-FPN model), so weights over
  ``PACKED_LINEAR_MAX_BYTES`` (128 MB) stay unpacked.
* ``TEST.QUANTIZE`` (default ``""``; ``"int8"``): dynamic int8 quantization
  (``torch.ao.quantization.quantize_dynamic``) of the ``nn.Linear`` layers: the recognition MLP,
  the box and objectness heads and the caption decoder's projections. Weights are stored in int8,
  activations quantized on the fly. Outputs change slightly (scores, boxes and some captions).
  The LSTM's recurrent step runs as plain matrix products of its float weights (see
  ``densecap.modeling.language_model``), so it stays float.
* ``TEST.PRECISION`` (default ``"float32"``; ``"bfloat16"``): the heavy layers run their matrix
  products and convolutions in bfloat16 under ``torch.autocast``: the backbone, the RPN head, the
  recognition MLP and the caption decoders' ``generate`` (region and whole-image captions). Each of
  them hands float32 back (its tensor outputs are cast up), so box geometry, the NMS, the sampler,
  the score and box heads and the caption log-probabilities stay float32. Fast on CPUs with native
  bfloat16 (AVX512-BF16, AMX) and on GPUs; elsewhere it is emulated and slower, and a warning says so.
  Outputs change slightly (scores, boxes, some captions). Not combined with ``TEST.QUANTIZE``.

They change the model in place: apply them to a model used only for inference (the predictor
does, when it is built from a config).
"""
from __future__ import annotations

import logging
import types
from typing import Optional

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from densecap.modeling.packed_linear import PackedWeight, packing_available
from densecap.modeling.packed_linear import packed_linear as _packed_linear

logger = logging.getLogger(__name__)

__all__ = ["QUANTIZE_CHOICES", "PRECISION_CHOICES", "WINOGRAD_MIN_PIXELS", "PACKED_LINEAR_MAX_BYTES",
           "fold_frozen_batchnorm", "winograd_convolutions", "pack_linear_weights", "to_channels_last",
           "quantize_int8", "autocast_bfloat16", "optimize_for_inference"]

QUANTIZE_CHOICES = ("", "int8")
PRECISION_CHOICES = ("float32", "bfloat16")
# Output pixels (batch x height x width) from which NNPACK's Winograd runs, on one thread; with n
# threads n^2 times as many. Measured (AVX-512, 64-512 channels) against oneDNN's direct 3x3
# convolution, 1 thread: 2.1-3.1x as fast on maps of 1,500 pixels and more, 1.4x at 391 pixels,
# 0.5x at 108; 2 threads (NNPACK's own parallelism scales less well): 1.5-2.5x at 1,500 pixels and
# more, 1.0x at 1,024, 0.7x at 391.
WINOGRAD_MIN_PIXELS = 384
# Weights larger than this stay unpacked: the packed copy doubles their memory for a 10-15 % faster
# product (the original VGG-16 model's fc6, 25,088 x 4,096 = 411 MB, is one; the R50-FPN's fc6 is 51 MB).
PACKED_LINEAR_MAX_BYTES = 128 * 2**20


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


def _winograd_eligible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple) and conv.in_channels >= 16)


def _winograd_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``self``'s convolution through NNPACK's Winograd kernel where it is faster (see the module
    docstring), its own otherwise; the output keeps the input's memory format."""
    if (x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu"
            and self.weight.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")):
        ph, pw = self.padding
        pixels = x.shape[0] * (x.shape[2] + 2 * ph - 2) * (x.shape[3] + 2 * pw - 2)
        threads = torch.get_num_threads()
        if pixels >= WINOGRAD_MIN_PIXELS * threads * threads:
            out = torch._nnpack_spatial_convolution(x.contiguous(), self.weight.contiguous(), self.bias,
                                                    [ph, pw], [1, 1])
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
                return out.contiguous(memory_format=torch.channels_last)  # NHWC in, NHWC out
            return out
    return nn.Conv2d.forward(self, x)


def _runs_winograd(module: nn.Module) -> bool:
    return getattr(vars(module).get("forward"), "__func__", None) is _winograd_forward


def winograd_convolutions(model: nn.Module) -> int:
    """Route the model's eligible 3x3 convolutions through NNPACK's Winograd kernel
    (``TEST.WINOGRAD``, see the module docstring), in place. Returns the number routed: 0 where
    NNPACK is not available (the layers stay as they are)."""
    if not torch.backends.nnpack.is_available():  # also initialises NNPACK, which its kernels need
        logger.info("TEST.WINOGRAD: NNPACK is not available in this torch build; 3x3 convolutions stay direct")
        return 0
    n = 0
    for m in model.modules():
        if _winograd_eligible(m) and "forward" not in vars(m):  # not wrapped yet
            m.forward = types.MethodType(_winograd_forward, m)  # bound: a copy of the model runs its own weights
            n += 1
    return n


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _packed_linear(x, self.weight, self.bias, self.packed_weight)


def pack_linear_weights(model: nn.Module) -> int:
    """Route the model's plain float32 ``nn.Linear`` layers and caption decoders' recurrent weights
    through oneDNN-packed copies of their weights (``TEST.PACKED_LINEAR``, see the module
    docstring), in place. Returns the number of weights routed: 0 where oneDNN is not available."""
    from densecap.modeling.language_model import CaptionDecoder

    if not packing_available():
        logger.info("TEST.PACKED_LINEAR: this torch build has no oneDNN; linear layers stay as they are")
        return 0
    n = 0
    for m in model.modules():
        if (type(m) is nn.Linear and m.weight.dtype == torch.float32 and "forward" not in vars(m)
                and m.weight.numel() * m.weight.element_size() <= PACKED_LINEAR_MAX_BYTES):
            m.packed_weight = PackedWeight()
            m.forward = types.MethodType(_packed_forward, m)  # bound: a copy of the model runs its own weights
            n += 1
        if isinstance(m, CaptionDecoder) and m.packed_rnn is None:
            names = [k for k, p in m.rnn.named_parameters() if k.startswith("weight_") and p.dtype == torch.float32]
            m.packed_rnn = {k: PackedWeight() for k in names}
            n += len(names)
    return n


def _channels_last_input(module: nn.Module, args):
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def _contiguous_output(module: nn.Module, args, out):
    return out.contiguous() if isinstance(out, torch.Tensor) else None


def to_channels_last(backbone: nn.Module, *, nchw_output: bool = False) -> None:
    """Weights and (through a forward pre-hook) input images of ``backbone`` in channels_last;
    ``nchw_output``: its output tensor converted back to NCHW (a forward hook)."""
    backbone.to(memory_format=torch.channels_last)
    backbone.register_forward_pre_hook(_channels_last_input)
    if nchw_output:
        backbone.register_forward_hook(_contiguous_output)


def _stem_before_winograd(backbone: nn.Module) -> Optional[nn.Module]:
    """The backbone's first stage (``backbone.stages[0]``, e.g. ResNet's 7x7 convolution and max
    pool) when no convolution of it runs Winograd; else None."""
    stages = getattr(backbone, "stages", None)
    if isinstance(stages, (nn.ModuleList, nn.Sequential)) and len(stages):
        if not any(map(_runs_winograd, stages[0].modules())):
            return stages[0]
    return None


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the model's ``nn.Linear`` layers, in place; returns the model."""
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def _float32_outputs(out):
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return type(out)((k, _float32_outputs(v)) for k, v in out.items())
    if isinstance(out, (list, tuple)):
        return type(out)(_float32_outputs(v) for v in out)
    return out


def _autocast_method(obj: nn.Module, name: str, device_type: str) -> None:
    """``obj.<name>`` runs under bfloat16 autocast and returns float32 tensors. The wrapper is
    bound to ``obj`` as a method calling the class's own, so a copy of the model
    (``copy.deepcopy``) runs its own weights."""
    method = getattr(type(obj), name)

    def wrapped(self, *args, **kwargs):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = method(self, *args, **kwargs)
        return _float32_outputs(out)

    setattr(obj, name, types.MethodType(wrapped, obj))  # an instance attribute shadows the class's method


def _bfloat16_targets(model: nn.Module):
    """(module, method name) pairs of the heavy layers: see ``TEST.PRECISION`` in the module docstring."""
    from densecap.modeling.image_caption.base import ImageCaptionHead
    from densecap.modeling.language_model import CaptionDecoder

    targets, seen = [], set()

    def add(sub, method: str) -> None:  # each module once (a shared backbone appears twice)
        if isinstance(sub, nn.Module) and id(sub) not in seen:
            targets.append((sub, method))
            seen.add(id(sub))

    for module in model.modules():
        add(getattr(module, "backbone", None), "forward")
        add(getattr(module, "recognition", None), "forward")
        add(getattr(getattr(module, "rpn", None), "head", None), "forward")
        if isinstance(module, (CaptionDecoder, ImageCaptionHead)):
            add(module, "generate")
    return targets


def autocast_bfloat16(model: nn.Module) -> int:
    """Run the model's heavy layers in bfloat16 (``TEST.PRECISION bfloat16``), in place. Returns the
    number of layers wrapped."""
    try:
        device_type = next(model.parameters()).device.type
    except StopIteration:
        return 0
    if device_type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        logger.warning("TEST.PRECISION bfloat16: this CPU has no native bfloat16 (AVX512-BF16 or AMX); "
                       "it is emulated and slower than float32")
    targets = _bfloat16_targets(model)
    for obj, name in targets:
        _autocast_method(obj, name, device_type)
    return len(targets)


def optimize_for_inference(model: nn.Module, cfg=None, *, fold_bn: Optional[bool] = None,
                           winograd: Optional[bool] = None, channels_last: Optional[bool] = None,
                           packed_linear: Optional[bool] = None, quantize: Optional[str] = None,
                           precision: Optional[str] = None) -> nn.Module:
    """Apply the test-time levers a config asks for (``TEST.FOLD_BN``, ``TEST.WINOGRAD``,
    ``TEST.CHANNELS_LAST``, ``TEST.PACKED_LINEAR``, ``TEST.QUANTIZE``, ``TEST.PRECISION``; the
    keyword arguments override it) to ``model`` in eval mode, in place; returns the model. A second
    call leaves the model as the first one made it."""
    test = getattr(cfg, "TEST", None) if cfg is not None else None
    if fold_bn is None:
        fold_bn = bool(getattr(test, "FOLD_BN", True)) if test is not None else True
    if winograd is None:
        winograd = bool(getattr(test, "WINOGRAD", True)) if test is not None else True
    if packed_linear is None:
        packed_linear = bool(getattr(test, "PACKED_LINEAR", True)) if test is not None else True
    if channels_last is None:
        channels_last = bool(getattr(test, "CHANNELS_LAST", True)) if test is not None else True
    if quantize is None:
        quantize = str(getattr(test, "QUANTIZE", "")) if test is not None else ""
    if precision is None:
        precision = str(getattr(test, "PRECISION", "float32")) if test is not None else "float32"
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"TEST.QUANTIZE must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"TEST.PRECISION must be one of {PRECISION_CHOICES}, got {precision!r}")
    if quantize and precision != "float32":
        raise ValueError(f"TEST.QUANTIZE {quantize} and TEST.PRECISION {precision} cannot be combined: pick one")
    model.eval()
    if getattr(model, "_inference_levers", None) is not None:  # already applied
        return model
    folded = fold_frozen_batchnorm(model) if fold_bn else 0
    # bfloat16 autocast runs the convolutions in bfloat16 (faster than Winograd in float32)
    winograd_convs = winograd_convolutions(model) if winograd and precision == "float32" else 0
    backbone = getattr(model, "backbone", None)
    channels_last = bool(channels_last and isinstance(backbone, nn.Module))
    if channels_last and winograd_convs and any(map(_runs_winograd, backbone.modules())):
        # NNPACK wants NCHW maps: only the stem before it runs channels_last (see the module docstring)
        stem = _stem_before_winograd(backbone)
        if stem is not None:
            to_channels_last(stem, nchw_output=True)
        channels_last = "stem" if stem is not None else False
    elif channels_last:
        to_channels_last(backbone)
    if quantize == "int8":
        quantize_int8(model)
    # after int8 (which leaves no float nn.Linear); bfloat16 autocast runs its own products
    packed = pack_linear_weights(model) if packed_linear and precision == "float32" else 0
    if precision == "bfloat16":
        autocast_bfloat16(model)
    model._inference_levers = {"fold_bn": folded, "winograd": winograd_convs, "channels_last": channels_last,
                               "packed_linear": packed, "quantize": quantize, "precision": precision}
    logger.info("inference levers: %d frozen batch norms folded, %d 3x3 convolutions through Winograd, "
                "channels_last=%s, %d packed linear weights, quantize=%r, precision=%s",
                folded, winograd_convs, channels_last, packed, quantize or "off", precision)
    return model
