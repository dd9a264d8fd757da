"""The packed-linear lever (``TEST.PACKED_LINEAR``; densecap/modeling/packed_linear.py and
densecap/inference/speed.py): the same function as ``F.linear``, its fallbacks, a packed copy
that follows the weights, and what the lever routes in a model."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_config
from densecap.data.tokenizer import Vocabulary
from densecap.inference.speed import optimize_for_inference, pack_linear_weights
from densecap.modeling import build_model
from densecap.modeling.packed_linear import PackedWeight, packed_linear



def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("shape", [(7, 64), (1, 64), (3, 5, 64)])
def test_same_function_as_linear(shape):
    g = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(96, 64, generator=g), torch.randn(96, generator=g), torch.randn(*shape, generator=g)
    packed = PackedWeight()
    with torch.no_grad():
        got = packed_linear(x, w, b, packed)
        assert packed._packed is not None and packed._packed.is_mkldnn  # the packed route ran
        _close(got, F.linear(x, w, b))
        assert got.shape == (*shape[:-1], 96)
        _close(packed_linear(x, w, None, PackedWeight()), F.linear(x, w))


def test_falls_back_with_autograd_and_autocast():
    w = torch.randn(8, 4, requires_grad=True)
    x = torch.randn(3, 4, requires_grad=True)
    packed = PackedWeight()
    packed_linear(x, w, None, packed).sum().backward()  # F.linear: gradients flow
    assert packed._packed is None and x.grad is not None and w.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert packed_linear(x, w, None, packed).dtype == torch.bfloat16 and packed._packed is None
    with torch.no_grad():
        assert packed_linear(x.double(), w.double(), None, packed).dtype == torch.float64
        assert packed_linear(x[:0], w, None, packed).shape == (0, 8)
    assert packed._packed is None


def test_the_packed_copy_follows_the_weight():
    w, x = torch.randn(16, 8), torch.randn(2, 8)
    packed = PackedWeight()
    with torch.no_grad():
        packed_linear(x, w, None, packed)
        w.mul_(2.0)  # in place: repacked
        _close(packed_linear(x, w, None, packed), x @ w.t())
        other = torch.randn(16, 8)  # another tensor: repacked
        _close(packed_linear(x, other, None, packed), x @ other.t())
    assert copy.deepcopy(packed)._packed is None and pickle.loads(pickle.dumps(packed))._packed is None


def _tiny_model():
    torch.manual_seed(0)
    cfg = tiny_config("MODEL.DEVICE", "cpu", "MODEL.BACKBONE.WEIGHTS", "")
    return build_model(cfg, Vocabulary([f"w{i}" for i in range(40)])).eval(), cfg


def test_routes_every_float_linear_and_the_caption_rnn():
    model, _ = _tiny_model()
    keys = set(model.state_dict())
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    decoder = model.caption_head
    n = pack_linear_weights(model)
    assert n == len(linears) + 2  # + the LSTM's weight_ih_l0 and weight_hh_l0
    assert all(isinstance(m.packed_weight, PackedWeight) for m in linears)
    assert sorted(decoder.packed_rnn) == ["weight_hh_l0", "weight_ih_l0"]
    assert set(model.state_dict()) == keys  # nothing packed is saved
    assert pack_linear_weights(model) == 0  # applied once
    with torch.no_grad():
        decoder.generate(torch.randn(3, decoder.image_proj[0].in_features))
    assert all(p._packed is not None for p in decoder.packed_rnn.values())  # the greedy loop used them
    assert decoder.out.packed_weight._packed is not None


def test_a_copy_of_the_model_packs_its_own_weights():
    model, cfg = _tiny_model()
    optimize_for_inference(model, cfg)
    assert model._inference_levers["packed_linear"] > 0
    decoder = model.caption_head
    codes = torch.randn(4, decoder.image_proj[0].in_features)
    with torch.no_grad():
        decoder.generate(codes)
        twin = copy.deepcopy(model)
        twin_dec = twin.caption_head
        twin_dec.out.bias.add_(torch.linspace(-5, 5, twin_dec.out.bias.numel()))
        proj, twin_proj = decoder.image_proj[0], twin_dec.image_proj[0]
        twin_proj.weight.mul_(0.5)
        _close(twin_proj(codes), F.linear(codes, twin_proj.weight, twin_proj.bias))
        _close(proj(codes), F.linear(codes, proj.weight, proj.bias))  # the original keeps its own
        assert not torch.allclose(twin_proj(codes), proj(codes))
        tokens, _ = twin_dec.generate(codes)
        twin_dec.packed_rnn = None  # the copy's plain path gives the same captions
        del twin_dec.out.forward, twin_dec.out.packed_weight
        assert torch.equal(twin_dec.generate(codes)[0], tokens)


def test_bfloat16_and_int8_leave_nothing_packed():
    model, cfg = _tiny_model()
    optimize_for_inference(model, cfg, precision="bfloat16")
    assert model._inference_levers["packed_linear"] == 0
    model, cfg = _tiny_model()
    optimize_for_inference(model, cfg, quantize="int8")
    assert model._inference_levers["packed_linear"] == 2  # only the LSTM's float weights


def test_weights_over_the_size_cap_stay_unpacked(monkeypatch):
    from densecap.inference import speed

    net = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))  # 16 KB and 2 KB of weights
    monkeypatch.setattr(speed, "PACKED_LINEAR_MAX_BYTES", 4096)
    assert pack_linear_weights(net) == 1
    assert "forward" not in vars(net[0]) and isinstance(net[1].packed_weight, PackedWeight)


def test_without_onednn_nothing_is_routed(monkeypatch):
    from densecap.inference import speed

    monkeypatch.setattr(speed, "packing_available", lambda: False)
    model, _ = _tiny_model()
    assert pack_linear_weights(model) == 0
    assert not any("forward" in vars(m) for m in model.modules() if type(m) is nn.Linear)
    assert model.caption_head.packed_rnn is None
