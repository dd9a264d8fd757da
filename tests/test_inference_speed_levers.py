"""Test-time speed levers (densecap/inference/speed.py): the default ones (frozen batch norms
folded, Winograd 3x3 convolutions, channels_last, packed linear weights, inference mode) give the
boxes and captions of the plain path;
the opt-in int8 quantization runs and gives valid output."""
import copy

import numpy as np
import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from conftest import tiny_config
from densecap.data.tokenizer import Vocabulary
from densecap.inference.predictor import DenseCapPredictor
from densecap.inference import speed
from densecap.inference.speed import fold_frozen_batchnorm, optimize_for_inference
from densecap.modeling import build_model


def _cfg(*opts):
    return tiny_config("MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NORM", "FrozenBN", "MODEL.BACKBONE.WEIGHTS", "",
                       "TEST.DETECTIONS_PER_IMAGE", 20, *opts)


def _model(cfg):
    torch.manual_seed(0)
    model = build_model(cfg, Vocabulary([f"w{i}" for i in range(40)])).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # statistics far from the identity, so folding changes the weights
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                c = m.weight.numel()
                m.weight.copy_(1 + 0.3 * torch.randn(c, generator=g))
                m.bias.copy_(0.3 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), rng.integers(0, 256, (128, 80, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def plain_predictions():
    cfg = _cfg()
    model = _model(cfg)
    plain = DenseCapPredictor(model, image_size=int(cfg.INPUT.MAX_SIZE), device="cpu")  # no levers
    outs = plain.predict(_images())  # the unoptimised path: nothing folded, NCHW
    assert not hasattr(model, "_inference_levers")
    return outs


def test_fold_is_exact_function():
    model = _model(_cfg())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model.backbone(x)
        n = fold_frozen_batchnorm(model)
        got = model.backbone(x)
    assert n > 0
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opts", [(), ("TEST.CHANNELS_LAST", False), ("TEST.FOLD_BN", False),
                                  ("TEST.WINOGRAD", False), ("TEST.PACKED_LINEAR", False)])
def test_levers_keep_boxes_and_captions(plain_predictions, opts, monkeypatch):
    monkeypatch.setattr(speed, "WINOGRAD_MIN_PIXELS", 0)  # the tiny model's maps are small: Winograd on all
    nnpack = []
    real = torch._nnpack_spatial_convolution
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *a: nnpack.append(1) or real(*a))
    cfg = _cfg(*opts)
    model = _model(cfg)
    fast = DenseCapPredictor.from_config(cfg, model)
    levers = model._inference_levers
    assert levers["fold_bn"] == (0 if "TEST.FOLD_BN" in opts else levers["fold_bn"]) and levers["quantize"] == ""
    winograd = "TEST.WINOGRAD" not in opts
    assert (levers["winograd"] > 0) == winograd
    # with Winograd (NCHW maps) channels_last covers the stem only
    assert levers["channels_last"] == (False if "TEST.CHANNELS_LAST" in opts else "stem" if winograd else True)
    if "TEST.FOLD_BN" not in opts:
        assert levers["fold_bn"] > 0
    assert (levers["packed_linear"] > 0) == ("TEST.PACKED_LINEAR" not in opts)
    got = fast.predict(_images())
    assert bool(nnpack) == winograd
    for a, b in zip(plain_predictions, got):
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(b.boxes, a.boxes, rtol=0, atol=1e-4)
        assert b.captions == a.captions
        np.testing.assert_allclose(b.scores, a.scores, rtol=0, atol=1e-5)


def test_levers_apply_once():
    cfg = _cfg()
    model = _model(cfg)
    optimize_for_inference(model, cfg)
    weights = copy.deepcopy(model.state_dict())
    optimize_for_inference(model, cfg)  # the predictor built from it again: nothing folded twice
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_int8_runs_and_gives_valid_output(plain_predictions):
    cfg = _cfg("TEST.QUANTIZE", "int8")
    model = _model(cfg)
    pred = DenseCapPredictor.from_config(cfg, model)
    assert model._inference_levers["quantize"] == "int8"
    assert isinstance(model.roi_heads.objectness, torch.ao.nn.quantized.dynamic.Linear)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    _assert_valid_and_close(pred.predict(_images()), plain_predictions)


def _assert_valid_and_close(predictions, plain):
    """Valid output (float32 boxes inside the image, sorted scores in [0, 1], finite log-probabilities)
    with about as many boxes as the plain path: an approximate lever may keep a box more or less."""
    for p, ref in zip(predictions, plain):
        assert 0 < len(p) <= 20 and abs(len(p) - len(ref)) <= 3
        assert p.boxes.dtype == np.float32 and np.isfinite(p.boxes).all() and (p.boxes[:, 2:] > 0).all()
        assert (p.boxes[:, 0] >= 0).all() and (p.boxes[:, 0] + p.boxes[:, 2] <= p.width + 1e-3).all()
        assert (p.boxes[:, 1] >= 0).all() and (p.boxes[:, 1] + p.boxes[:, 3] <= p.height + 1e-3).all()
        assert ((p.scores >= 0) & (p.scores <= 1)).all() and np.all(np.diff(p.scores) <= 1e-6)
        assert all(isinstance(c, str) for c in p.captions) and np.isfinite(p.caption_logprobs).all()


def test_bad_quantize_value_is_an_error():
    cfg = _cfg("TEST.QUANTIZE", "int4")
    with pytest.raises(ValueError, match="TEST.QUANTIZE"):
        optimize_for_inference(_model(cfg), cfg)


def test_bfloat16_runs_heavy_layers_in_bfloat16_and_hands_back_float32(plain_predictions):
    cfg = _cfg("TEST.PRECISION", "bfloat16")
    model = _model(cfg)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model.backbone(x)
    pred = DenseCapPredictor.from_config(cfg, model)
    assert model._inference_levers["precision"] == "bfloat16"
    seen = []
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    hook = conv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    with torch.no_grad():
        got = model.backbone(x)
    hook.remove()
    assert seen == [torch.bfloat16]  # inside: bfloat16
    for k in ref:  # outside: float32, within bfloat16's rounding of the float32 features
        assert got[k].dtype == torch.float32
        scale = float(ref[k].abs().max())
        assert float((got[k] - ref[k].contiguous()).abs().max()) <= 0.05 * scale + 1e-6, k
    twin = copy.deepcopy(model)  # a copy runs its own weights, still in bfloat16
    assert twin.backbone.forward.__self__ is twin.backbone and twin.caption_head.generate.__self__ is twin.caption_head
    with torch.no_grad():
        for prm in twin.backbone.parameters():
            prm.zero_()
        changed = twin.backbone(x)
        again = model.backbone(x)
    assert all(not torch.equal(changed[k], got[k]) for k in got)  # the copy's weights, not the original's
    assert all(torch.equal(again[k], got[k]) for k in got)
    codes = torch.randn(5, model.caption_head.image_proj[0].in_features)
    tokens, logprobs = model.caption_head.generate(codes, max_len=6)
    assert tokens.dtype == torch.long and logprobs.dtype == torch.float32 and torch.isfinite(logprobs).all()
    _assert_valid_and_close(pred.predict(_images()), plain_predictions)


def test_precision_choices_and_exclusive_with_int8():
    cfg = _cfg("TEST.PRECISION", "float16")
    with pytest.raises(ValueError, match="TEST.PRECISION"):
        optimize_for_inference(_model(cfg), cfg)
    cfg = _cfg("TEST.PRECISION", "bfloat16", "TEST.QUANTIZE", "int8")
    with pytest.raises(ValueError, match="cannot be combined"):
        optimize_for_inference(_model(cfg), cfg)
