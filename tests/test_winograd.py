"""The Winograd lever (``TEST.WINOGRAD``, densecap/inference/speed.py): which convolutions it takes,
that they compute the same function as the direct convolution, when it falls back, and that the
R50-FPN model of ``tools/benchmark.py infer`` gives the same boxes and captions with all the
default levers as without any."""
import copy

import pytest
import torch
from torch import nn

from densecap.benchmarks import _rcnn_common as C
from densecap.inference import speed
from densecap.inference.speed import optimize_for_inference, winograd_convolutions



@pytest.fixture()
def nnpack_calls(monkeypatch):
    """Counts the calls of NNPACK's convolution (the lever looks it up at call time)."""
    calls = []
    real = torch._nnpack_spatial_convolution

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", counting)
    return calls


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),     # 3 input channels: not taken
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),    # taken
        nn.Conv2d(32, 32, 3, padding=0),    # taken (no padding)
        nn.Conv2d(32, 32, 3, padding=1, bias=False),  # taken
        nn.Conv2d(32, 32, 3, stride=2, padding=1),    # stride 2: not taken
        nn.Conv2d(32, 32, 1),               # 1x1: not taken
        nn.Conv2d(32, 32, 3, padding=2, dilation=2),  # dilated: not taken
        nn.Conv2d(32, 32, 3, padding=1, groups=2),    # grouped: not taken
    ).eval()


def test_takes_exactly_the_3x3_stride1_convolutions():
    net = _net()
    assert winograd_convolutions(net) == 3
    taken = [i for i, m in enumerate(net) if "forward" in vars(m)]
    assert taken == [2, 3, 4]
    assert winograd_convolutions(net) == 0  # applied once


def test_same_function_and_memory_format(nnpack_calls):
    net = _net()
    x = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        ref = net(x)
        winograd_convolutions(net)
        got = net(x)
        assert len(nnpack_calls) == 3  # maps of 2 x 68 x 88 pixels and more: above the threshold
        assert got.is_contiguous()
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
        conv = net[2]
        xc = torch.randn(1, 32, 64, 72).contiguous(memory_format=torch.channels_last)
        out = conv(xc)
        assert out.is_contiguous(memory_format=torch.channels_last)  # the layout of its input
        torch.testing.assert_close(out, nn.Conv2d.forward(conv, xc), rtol=1e-4, atol=1e-4)
        xt = torch.randn(1, 32, 72, 64).transpose(2, 3)  # a non-contiguous NCHW view: NCHW out
        out = conv(xt)
        assert out.is_contiguous()
        torch.testing.assert_close(out, nn.Conv2d.forward(conv, xt), rtol=1e-4, atol=1e-4)


def test_falls_back_where_it_would_not_help_or_cannot_run(nnpack_calls, monkeypatch):
    net = _net()
    winograd_convolutions(net)
    conv = net[2]
    with torch.no_grad():
        conv(torch.randn(1, 32, 8, 8))  # 64 pixels: below the threshold
    assert nnpack_calls == []
    x = torch.randn(1, 32, 64, 64, requires_grad=True)
    conv(x).sum().backward()  # with autograd: the layer's own convolution, gradients flow
    assert nnpack_calls == [] and x.grad is not None and conv.weight.grad is not None
    with torch.no_grad():
        conv.double()(torch.randn(1, 32, 64, 64, dtype=torch.float64))  # float64: direct
        conv.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv(torch.randn(1, 32, 64, 64)).dtype == torch.bfloat16  # autocast's own path
    assert nnpack_calls == []
    monkeypatch.setattr(speed, "WINOGRAD_MIN_PIXELS", 0)
    with torch.no_grad():
        conv(torch.randn(1, 32, 8, 8))
    assert len(nnpack_calls) == 1  # the threshold is what decided


def test_a_copy_runs_its_own_weights():
    net = _net()
    winograd_convolutions(net)
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        x = torch.randn(1, 3, 64, 64)
        assert not torch.allclose(twin[2](net[0](x)), net[2](net[0](x)))


def test_without_nnpack_nothing_is_routed(monkeypatch):
    monkeypatch.setattr(torch.backends.nnpack, "is_available", lambda: False)
    net = _net()
    assert winograd_convolutions(net) == 0 and not any("forward" in vars(m) for m in net)


def test_bfloat16_precision_keeps_the_direct_convolutions():
    net = _net()
    optimize_for_inference(net, winograd=True, precision="bfloat16")
    assert net._inference_levers["winograd"] == 0


def _r50_fpn(*opts):
    torch.manual_seed(0)
    model, cfg = C.build_densecap("configs/densecap_R50_FPN_vg.yaml",
                                  ["TEST.BEAM_SIZE", "1", "TEST.DETECTIONS_PER_IMAGE", "30", *opts],
                                  C.vocabulary(10500), 2)
    return optimize_for_inference(model.eval(), cfg)


def test_benchmark_model_gives_the_boxes_and_captions_of_the_unoptimised_path(nnpack_calls, monkeypatch):
    """The R50-FPN DenseCap config as ``tools/benchmark.py infer`` builds it (random weights, frozen
    BN, 10,500 words), at 320 px: the default levers (folded norms, Winograd, channels_last stem,
    packed linear weights) against the plain path. Every eligible convolution runs Winograd here,
    whatever the map size."""
    monkeypatch.setattr(speed, "WINOGRAD_MIN_PIXELS", 0)
    plain = _r50_fpn("TEST.FOLD_BN", "False", "TEST.WINOGRAD", "False", "TEST.CHANNELS_LAST", "False",
                     "TEST.PACKED_LINEAR", "False")
    fast = _r50_fpn()
    assert fast._inference_levers["fold_bn"] == 53 and fast._inference_levers["winograd"] == 18
    assert fast._inference_levers["packed_linear"] == 6 + 2  # fc6, fc7, the heads, the decoder's; the LSTM
    assert fast._inference_levers["channels_last"] == "stem"  # NNPACK runs on NCHW maps, the stem on NHWC
    inputs = C.densecap_inputs(C.make_images(1, 320, 0.75, seed=0))
    with torch.inference_mode():
        a = plain(inputs)[0]["instances"]
        assert nnpack_calls == []
        b = fast(inputs)[0]["instances"]
    assert len(nnpack_calls) == 13 + 4 + 5  # ResNet's 3x3s, the FPN's outputs, the RPN head on 5 levels
    assert len(a) == len(b) == 30
    torch.testing.assert_close(b.pred_boxes, a.pred_boxes, rtol=0, atol=1e-3)
    assert torch.equal(b.pred_caption_tokens, a.pred_caption_tokens)
    torch.testing.assert_close(b.scores, a.scores, rtol=0, atol=1e-5)
