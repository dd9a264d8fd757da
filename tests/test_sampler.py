"""The localization layer's bilinear sampler (densecap/modeling/poolers.py).

Convention under test: pixel x sits at fractional feature index u = x / stride - 0.5; an S x S
grid of points runs from edge to edge of the box (corners included); neighbours outside the map
read 0.
"""
import math

import numpy as np
import pytest
import torch

from densecap.modeling.poolers import ROIPooler, assign_boxes_to_levels, bilinear_sample_boxes


def reference_sample(feat: np.ndarray, box, stride: float, S: int) -> np.ndarray:
    """Hand-written bilinear interpolation with zero padding. feat: (C, H, W) -> (C, S, S)."""
    C, H, W = feat.shape
    x1, y1, x2, y2 = box
    ts = [0.5] if S == 1 else [k / (S - 1) for k in range(S)]
    out = np.zeros((C, S, S))

    def at(i, j):
        if 0 <= i < H and 0 <= j < W:
            return feat[:, i, j]
        return np.zeros(C)

    for r, ty in enumerate(ts):
        for c, tx in enumerate(ts):
            x = x1 + (x2 - x1) * tx
            y = y1 + (y2 - y1) * ty
            u, v = x / stride - 0.5, y / stride - 0.5
            j0, i0 = math.floor(u), math.floor(v)
            a, b = u - j0, v - i0
            out[:, r, c] = (
                (1 - a) * (1 - b) * at(i0, j0) + a * (1 - b) * at(i0, j0 + 1)
                + (1 - a) * b * at(i0 + 1, j0) + a * b * at(i0 + 1, j0 + 1)
            )
    return out


def test_linear_map_is_reproduced_exactly_inside():
    # f[i, j] = 10 i + j is linear, so bilinear interpolation is exact: value(u, v) = 10 v + u
    H, W, stride = 6, 8, 4
    i, j = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    feat = (10 * i + j)[None, None]  # 1 1 H W
    box = torch.tensor([[6.0, 10.0, 22.0, 18.0]], dtype=torch.float64)  # points x = 6, 14, 22; y = 10, 14, 18
    out = bilinear_sample_boxes(feat, [box], stride, 3)[0, 0]  # 3 3
    xs = torch.tensor([6.0, 14.0, 22.0]) / stride - 0.5  # u = 1, 3, 5
    ys = torch.tensor([10.0, 14.0, 18.0]) / stride - 0.5  # v = 2, 3, 4
    expected = 10 * ys[:, None] + xs[None, :]
    assert torch.allclose(out, expected.double())
    # corners of the box are sampled: top-left reads f at (v=2, u=1) = 21 exactly
    assert out[0, 0].item() == pytest.approx(21.0)
    assert out[2, 2].item() == pytest.approx(45.0)


def test_matches_hand_computed_bilinear_interpolation():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 3, 5, 7, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[3.3, 2.1, 17.9, 13.2], [0.0, 0.0, 28.0, 20.0], [10.2, 5.5, 11.7, 6.1]], dtype=torch.float64)
    for S in (1, 2, 4, 7):
        out = bilinear_sample_boxes(feat, [boxes], 4, S)
        assert out.shape == (3, 3, S, S)
        for k in range(3):
            ref = reference_sample(feat[0].numpy(), boxes[k].tolist(), 4, S)
            np.testing.assert_allclose(out[k].numpy(), ref, rtol=1e-10, atol=1e-12)


def test_point_values_hand_computed():
    # one point: u = 9/4 - 0.5 = 1.75, v = 5/4 - 0.5 = 0.75 on a 2 x 3 map
    feat = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]], dtype=torch.float64)
    out = bilinear_sample_boxes(feat, [torch.tensor([[9.0, 5.0, 9.0, 5.0]], dtype=torch.float64)], 4, 1)
    # neighbours (0,1)=2, (0,2)=3, (1,1)=5, (1,2)=6 with weights a=0.75, b=0.75
    expected = 0.25 * 0.25 * 2 + 0.75 * 0.25 * 3 + 0.25 * 0.75 * 5 + 0.75 * 0.75 * 6
    assert out.item() == pytest.approx(expected)


def test_box_partly_outside_reads_zeros_there():
    feat = torch.ones(1, 2, 4, 4, dtype=torch.float64)  # covers pixels [0, 32) at stride 8
    box = torch.tensor([[-40.0, 8.0, 24.0, 16.0]], dtype=torch.float64)  # x points: -40, -8, 24 (S=3)
    out = bilinear_sample_boxes(feat, [box], 8, 3)[0]  # C 3 3
    # x = -40 and x = -8 (u = -5.5, -1.5) are more than one cell outside: exactly 0
    assert torch.all(out[:, :, 0] == 0) and torch.all(out[:, :, 1] == 0)
    # x = 24 (u = 2.5) is inside: 1
    assert torch.allclose(out[:, :, 2], torch.ones(2, 3, dtype=torch.float64))
    # half a cell outside blends with zero: x = -2 (u = -0.75) reads 0.25 * 1
    half = bilinear_sample_boxes(feat, [torch.tensor([[-2.0, 12.0, -2.0, 12.0]], dtype=torch.float64)], 8, 1)
    assert half.flatten()[0].item() == pytest.approx(0.25)
    ref = reference_sample(feat[0].numpy(), box[0].tolist(), 8, 3)
    np.testing.assert_allclose(out.numpy(), ref)


def test_zero_size_boxes_do_not_crash_or_nan():
    feat = torch.randn(1, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[10.0, 10.0, 10.0, 10.0], [5.0, 7.0, 5.0, 20.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64,
                         requires_grad=True)
    out = bilinear_sample_boxes(feat, [boxes], 8, 7)
    assert torch.isfinite(out).all()
    # a point box reads the same value everywhere
    assert torch.allclose(out[0], out[0, :, :1, :1].expand(4, 7, 7))
    out.sum().backward()
    assert torch.isfinite(boxes.grad).all() and torch.isfinite(feat.grad).all()
    # no boxes at all
    empty = bilinear_sample_boxes(feat, [torch.zeros(0, 4, dtype=torch.float64)], 8, 7)
    assert empty.shape == (0, 4, 7, 7)


def test_gradcheck_features_and_box_coordinates():
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    # coordinates chosen so that no sampling point sits exactly on a cell centre (kinks)
    b0 = torch.tensor([[3.3, 2.7, 17.1, 15.9], [-5.1, 1.3, 9.7, 30.2]], dtype=torch.float64, requires_grad=True)
    b1 = torch.tensor([[11.3, 7.9, 21.7, 12.3]], dtype=torch.float64, requires_grad=True)

    def fn(f, x0, x1):
        return bilinear_sample_boxes(f, [x0, x1], 4, 3)

    assert torch.autograd.gradcheck(fn, (feat, b0, b1), eps=1e-6, atol=1e-6)
    # the box gradient is really there (not identically zero)
    fn(feat, b0, b1).sum().backward()
    assert b0.grad.abs().sum() > 0 and b1.grad.abs().sum() > 0


def test_boxes_go_to_their_own_image():
    feat = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)]).double()  # image 0: 0, image 1: 1
    box = torch.tensor([[4.0, 4.0, 12.0, 12.0]], dtype=torch.float64)
    out = bilinear_sample_boxes(feat, [box, box.clone(), torch.zeros(0, 4, dtype=torch.float64)], 4, 2)
    assert out.shape == (2, 1, 2, 2)
    assert torch.all(out[0] == 0) and torch.all(out[1] == 1)


def test_fpn_level_rule():
    sizes = torch.tensor([10.0, 111.0, 112.0, 224.0, 447.0, 448.0, 5000.0])
    boxes = torch.stack([torch.zeros(7), torch.zeros(7), sizes, sizes], dim=1)
    lvl = assign_boxes_to_levels(boxes, 2, 5)
    # floor(4 + log2(s / 224)): 10 -> 2 (clamped), 111 -> 2, 112 -> 3, 224 -> 4, 447 -> 4, 448 -> 5, 5000 -> 5
    assert lvl.tolist() == [0, 0, 1, 2, 2, 3, 3]
    zero = assign_boxes_to_levels(torch.zeros(1, 4), 2, 5)
    assert zero.tolist() == [0]


def test_multilevel_pooler_reads_the_assigned_level():
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(2, 3, 64 // s, 64 // s, generator=g, dtype=torch.float64) for s in (4, 8, 16, 32)]
    pooler = ROIPooler(output_size=3, strides=[4, 8, 16, 32])
    b0 = torch.tensor([[1.0, 2.0, 30.0, 40.0], [0.0, 0.0, 63.0, 63.0]], dtype=torch.float64)  # ~34 -> p2, 63 -> p2
    b1 = torch.tensor([[5.0, 5.0, 60.0, 60.0], [3.0, 3.0, 9.0, 9.0]], dtype=torch.float64)
    # make one box large enough for a coarser level by a smaller canonical size
    pooler.canonical_size = 32.0
    out = pooler(feats, [b0, b1])
    assert out.shape == (4, 3, 3, 3)
    all_boxes = torch.cat([b0, b1])
    levels = assign_boxes_to_levels(all_boxes, 2, 5, canonical_size=32.0)
    assert len(set(levels.tolist())) > 1
    img = [0, 0, 1, 1]
    for k in range(4):
        lv = int(levels[k])
        ref = bilinear_sample_boxes(feats[lv][img[k] : img[k] + 1], [all_boxes[k : k + 1]], [4, 8, 16, 32][lv], 3)
        assert torch.allclose(out[k], ref[0])


def test_roi_align_option_and_box_gradients():
    feat = torch.randn(1, 2, 8, 8, requires_grad=True)
    boxes = torch.tensor([[4.3, 5.1, 40.2, 33.7]], requires_grad=True)
    bil = ROIPooler(output_size=4, strides=[8], sampler="bilinear")
    ra = ROIPooler(output_size=4, strides=[8], sampler="roi_align")
    bil([feat], [boxes]).sum().backward()
    assert boxes.grad is not None and boxes.grad.abs().sum() > 0
    boxes.grad = None
    out = ra([feat], [boxes])
    assert out.shape == (1, 2, 4, 4)
    out.sum().backward()
    assert boxes.grad is None  # RoIAlign does not differentiate the boxes
    assert feat.grad is not None
    # on a constant map both samplers read the constant inside the map
    const = torch.full((1, 1, 8, 8), 3.0)
    inner = torch.tensor([[16.0, 16.0, 40.0, 40.0]])
    assert torch.allclose(bil([const], [inner]), torch.full((1, 1, 4, 4), 3.0))
    assert torch.allclose(ra([const], [inner]), torch.full((1, 1, 4, 4), 3.0))
    with pytest.raises(ValueError):
        ROIPooler(output_size=4, strides=[8], sampler="nearest")
