"""The original DenseCap's (Lua/Torch7) box, NMS, sampler and resize operations, reproduced.

These functions follow ``densecap/box_utils.lua``, ``densecap/modules/*.lua`` of
jcjohnson/densecap, qassemoquab/stnbhwd's ``AffineGridGeneratorBHWD`` / ``BilinearSamplerBHWD``
and torch/image's ``image.scale``, in float32 with the same order of operations, so the
original-compatible model gives the original's numbers. They are *not* the project's own
conventions (``densecap.structures.boxes``: continuous 0-based pixels); the differences:

* Pixel coordinates are **1-based and inclusive**: a box ``(x1, y1, x2, y2)`` covers pixels
  ``x1 .. x2``, so its width is ``x2 - x1 + 1``. ``(xc, yc, w, h)`` converts to corners with
  ``x1 = xc - (w - 1) / 2``, ``x2 = xc + (w - 1) / 2``; corners convert back to centre/size
  with ``w = x2 - x1`` (no +1: the original's asymmetry, kept, which shrinks a clipped box by
  one pixel) and to ``(x, y, w, h)`` with ``w = x2 - x1 + 1``.
* IoU in NMS uses areas ``(x2 - x1 + 1) * (y2 - y1 + 1)``; a box is suppressed when its IoU
  with a kept box is ``> thresh`` (kept when ``<=``).
* Proposals are clipped to ``[1, W] x [1, H]`` (``x1 <= W - 1``, ``x2 >= 2``) and dropped when
  empty afterwards.

Shapes: B: boxes, C: channels, H, W: map size, S: sampling grid size.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from densecap.utils.torch7_sort import torch_sort_ascending

__all__ = [
    "xcycwh_to_x1y1x2y2", "x1y1x2y2_to_xcycwh", "x1y1x2y2_to_xywh", "xcycwh_to_xywh", "xywh_to_xcycwh",
    "xywh_to_x1y1x2y2", "clip_boxes", "th_sort_ascending", "nms", "box_iou", "exp_f32", "apply_box_transform",
    "invert_box_transform",
    "make_anchors", "box_to_affine", "affine_grid_bhwd", "bilinear_sampler_bhwd", "bilinear_roi_pooling",
    "torch7_scale_size", "torch7_image_scale", "original_to_image_pixels",
]


# ---- box formats (box_utils.lua) -----------------------------------------------------------
def xcycwh_to_x1y1x2y2(boxes: Tensor) -> Tensor:
    xc, yc, w, h = boxes.unbind(-1)
    hw, hh = (w - 1) / 2.0, (h - 1) / 2.0
    return torch.stack([xc - hw, yc - hh, hw + xc, hh + yc], dim=-1)


def x1y1x2y2_to_xcycwh(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1], dim=-1)


def x1y1x2y2_to_xywh(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, (x2 - x1) + 1, (y2 - y1) + 1], dim=-1)


def xcycwh_to_xywh(boxes: Tensor) -> Tensor:
    """What ``run_model.lua`` reports: (x, y, w, h), (x, y) the 1-based top-left pixel."""
    return x1y1x2y2_to_xywh(xcycwh_to_x1y1x2y2(boxes))


def xywh_to_xcycwh(boxes: Tensor) -> Tensor:
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x + w / 2, y + h / 2, w, h], dim=-1)


def xywh_to_x1y1x2y2(boxes: Tensor) -> Tensor:
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, (x + w) - 1, (y + h) - 1], dim=-1)


def clip_boxes(boxes: Tensor, height: float, width: float, fmt: str = "xcycwh", x_min: float = 1,
               y_min: float = 1) -> Tuple[Tensor, Tensor]:
    """``box_utils.clip_boxes`` with bounds ``x in [x_min, width]``, ``y in [y_min, height]``
    (the localization layer uses 1 and the image size).

    boxes (B, 4) in ``fmt`` ("xcycwh", "x1y1x2y2" or "xywh"). x1 is clamped to
    ``[x_min, width - 1]``, x2 to ``[x_min + 1, width]`` (same for y), so a box outside the image
    becomes a one-pixel sliver at its border rather than empty. Returns (clipped boxes (B, 4) in
    the same format, valid bool (B,): ``x2 > x1`` and ``y2 > y1`` after clipping).
    """
    if fmt == "xcycwh":
        b = xcycwh_to_x1y1x2y2(boxes)
    elif fmt == "x1y1x2y2":
        b = boxes.clone()
    elif fmt == "xywh":
        b = xywh_to_x1y1x2y2(boxes)
    else:
        raise ValueError(f"unknown box format {fmt!r}")
    x1 = b[:, 0].clamp(x_min, width - 1)
    y1 = b[:, 1].clamp(y_min, height - 1)
    x2 = b[:, 2].clamp(x_min + 1, width)
    y2 = b[:, 3].clamp(y_min + 1, height)
    b = torch.stack([x1, y1, x2, y2], dim=1)
    valid = (x2 > x1) & (y2 > y1)
    if fmt == "xcycwh":
        b = x1y1x2y2_to_xcycwh(b)
    elif fmt == "xywh":
        b = x1y1x2y2_to_xywh(b)
    return b, valid


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """``nn.BoxIoU``: IoU of (N, 4) and (M, 4) boxes in (xc, yc, w, h), areas ``w * h`` and
    corners ``xc -/+ w / 2`` (this module uses continuous extents, unlike NMS). -> (N, M)."""
    ax1, ay1 = a[:, 0] - a[:, 2] / 2, a[:, 1] - a[:, 3] / 2
    ax2, ay2 = a[:, 0] + a[:, 2] / 2, a[:, 1] + a[:, 3] / 2
    bx1, by1 = b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2
    bx2, by2 = b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
    w = (torch.minimum(ax2[:, None], bx2[None]) - torch.maximum(ax1[:, None], bx1[None])).clamp(min=0)
    h = (torch.minimum(ay2[:, None], by2[None]) - torch.maximum(ay1[:, None], by1[None])).clamp(min=0)
    inter = w * h
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / union


def th_sort_ascending(values) -> List[int]:
    """Indices that sort ``values`` ascending exactly as Torch7's ``torch.sort`` (TH's
    ``quicksortascend``; :func:`densecap.utils.torch7_sort.torch_sort_ascending`). Equal values
    come out in that algorithm's order, which decides NMS among tied scores."""
    return torch_sort_ascending(values).tolist()


def nms(boxes: Tensor, scores: Tensor, thresh: float, max_boxes: Optional[int] = None) -> Tensor:
    """``box_utils.nms``: greedy NMS on (B, 4) x1y1x2y2 boxes (1-based inclusive pixels).

    Boxes are visited by Torch7's ascending sort of ``scores`` (:func:`th_sort_ascending`, which
    decides the order of equal scores) taken from the end, highest first; IoU ``inter / (area_i + area_j - inter)`` with
    ``+1`` extents, computed in the boxes' dtype; a box survives while its IoU with every kept
    box is ``<= thresh``. Stops after ``max_boxes`` picks. Returns int64 indices, best first.
    """
    n = int(boxes.shape[0])
    if n == 0:
        return torch.zeros((0,), dtype=torch.long)
    # numpy: the same IEEE operations in the boxes' dtype as the original's tensor code, with far
    # less overhead per step; IoU is computed only against the boxes still in the running (the
    # values are elementwise, so they equal the original's IoU against all boxes)
    b = boxes.detach().cpu().numpy()
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    one = b.dtype.type(1.0)
    area = ((x2 - x1) + one) * ((y2 - y1) + one)
    sc = scores.detach().float().cpu()
    if torch.unique(sc).numel() == n:  # no ties: any sort gives Torch7's order
        order = torch.sort(sc, stable=True).indices.flip(0).numpy()
    else:
        order = np.asarray(th_sort_ascending(sc.tolist())[::-1], dtype=np.int64)  # visit order, best first
    thr = b.dtype.type(thresh)
    zero = b.dtype.type(0.0)
    # boxes in visit order; each step compares the next survivor with the contiguous rest
    ids, bx1, by1, bx2, by2, bar = order, x1[order], y1[order], x2[order], y2[order], area[order]
    pick = []
    limit = n if max_boxes is None else int(max_boxes)
    while ids.size and len(pick) < limit:
        pick.append(int(ids[0]))
        w = np.maximum((np.minimum(bx2[1:], bx2[0]) - np.maximum(bx1[1:], bx1[0])) + one, zero)
        h = np.maximum((np.minimum(by2[1:], by2[0]) - np.maximum(by1[1:], by1[0])) + one, zero)
        inter = w * h
        keep = (inter / ((bar[1:] + bar[0]) - inter)) <= thr
        if keep.all():
            ids, bx1, by1, bx2, by2, bar = ids[1:], bx1[1:], by1[1:], bx2[1:], by2[1:], bar[1:]
        else:
            ids, bx1, by1, bx2, by2, bar = (a[1:][keep] for a in (ids, bx1, by1, bx2, by2, bar))
    return torch.tensor(pick, dtype=torch.long)


# ---- box regression (ApplyBoxTransform.lua / InvertBoxTransform.lua) -----------------------
def exp_f32(x: Tensor) -> Tensor:
    """``exp`` of float32 values rounded from float64, as the C library's ``expf`` that Torch7
    calls (nearly always the same float; torch's own float32 exp differs by 1 ulp ten times as
    often). Other dtypes: ``torch.exp``."""
    if x.dtype != torch.float32:
        return torch.exp(x)
    return torch.exp(x.double()).float()


def apply_box_transform(boxes: Tensor, trans: Tensor) -> Tensor:
    """(xc, yc, w, h) boxes + (tx, ty, tw, th) -> boxes: ``x = tx * wa + xa``, ``w = wa *
    exp(tw)`` (no clamp of tw, as the original)."""
    xa, ya, wa, ha = boxes.unbind(-1)
    tx, ty, tw, th = trans.unbind(-1)
    return torch.stack([tx * wa + xa, ty * ha + ya, exp_f32(tw) * wa, exp_f32(th) * ha], dim=-1)


def invert_box_transform(anchors: Tensor, target: Tensor) -> Tensor:
    """The transform that moves (xc, yc, w, h) ``anchors`` onto ``target``."""
    xa, ya, wa, ha = anchors.unbind(-1)
    x, y, w, h = target.unbind(-1)
    return torch.stack([(x - xa) / wa, (y - ya) / ha, torch.log(w / wa), torch.log(h / ha)], dim=-1)


# ---- anchors (MakeAnchors.lua) -------------------------------------------------------------
def make_anchors(height: int, width: int, anchors_wh: Tensor, x0: float = 8.5, y0: float = 8.5,
                 sx: float = 16.0, sy: float = 16.0) -> Tensor:
    """All anchors of an H x W feature map as (k*H*W, 4) (xc, yc, w, h) in 1-based input pixels,
    in the original's order: anchor slowest, then row, then column. ``anchors_wh`` (k, 2)."""
    k = int(anchors_wh.shape[0])
    xs = torch.arange(width, dtype=torch.float32) * float(sx) + float(x0)  # W
    ys = torch.arange(height, dtype=torch.float32) * float(sy) + float(y0)  # H
    out = torch.empty((k, height, width, 4), dtype=torch.float32)
    out[..., 0] = xs.view(1, 1, width)
    out[..., 1] = ys.view(1, height, 1)
    out[..., 2] = anchors_wh[:, 0].float().view(k, 1, 1)
    out[..., 3] = anchors_wh[:, 1].float().view(k, 1, 1)
    return out.reshape(-1, 4)


# ---- the bilinear RoI sampler (BoxToAffine.lua + stnbhwd) -----------------------------------
def box_to_affine(boxes: Tensor, height: int, width: int) -> Tensor:
    """``nn.BoxToAffine``: (B, 4) (xc, yc, w, h) in an H x W image -> (B, 2, 3) matrices acting
    on (y, x, 1) normalised coordinates: row 1 ``(h / H, 0, (2 yc - H - 1) / (H - 1))``, row 2
    ``(0, w / W, (2 xc - W - 1) / (W - 1))``."""
    xc, yc, w, h = boxes.unbind(-1)
    H, W = float(height), float(width)
    out = boxes.new_zeros((boxes.shape[0], 2, 3))
    out[:, 0, 0] = h / H
    out[:, 0, 2] = (yc * 2 + (-1 - H)) / (H - 1)
    out[:, 1, 1] = w / W
    out[:, 1, 2] = (xc * 2 + (-1 - W)) / (W - 1)
    return out


def affine_grid_bhwd(theta: Tensor, out_h: int, out_w: int) -> Tensor:
    """stnbhwd ``AffineGridGeneratorBHWD``: (B, 2, 3) -> grids (B, S_h, S_w, 2) holding
    normalised (y, x); the base grid runs from -1 to 1 with the corners included."""
    by = torch.tensor([-1 + i / (out_h - 1) * 2 for i in range(out_h)], dtype=torch.float64).float()
    bx = torch.tensor([-1 + j / (out_w - 1) * 2 for j in range(out_w)], dtype=torch.float64).float()
    base = torch.stack([by.view(-1, 1).expand(out_h, out_w), bx.view(1, -1).expand(out_h, out_w),
                        torch.ones(out_h, out_w)], dim=-1).reshape(1, out_h * out_w, 3)  # 1 SS 3
    grid = torch.bmm(base.expand(theta.shape[0], -1, -1).to(theta), theta.transpose(1, 2))  # B SS 2
    return grid.reshape(theta.shape[0], out_h, out_w, 2)


def bilinear_sampler_bhwd(features: Tensor, grids: Tensor) -> Tensor:
    """stnbhwd ``BilinearSamplerBHWD`` for one feature map shared by all grids.

    features (C, H, W); grids (B, S_h, S_w, 2) normalised (y, x), -1 and 1 being the centres of
    the first and last rows/columns (``align_corners=True``). A neighbour outside the map reads
    0. Float32 in the original's order of operations. Returns (B, C, S_h, S_w).
    """
    C, H, W = features.shape
    yf, xf = grids[..., 0], grids[..., 1]  # B Sh Sw
    xcoord = (xf + 1) * float(W - 1) / 2
    ycoord = (yf + 1) * float(H - 1) / 2
    x0 = torch.floor(xcoord)
    y0 = torch.floor(ycoord)
    wx = 1 - (xcoord - x0)
    wy = 1 - (ycoord - y0)
    x0 = x0.long().reshape(-1)
    y0 = y0.long().reshape(-1)
    hwc = features.permute(1, 2, 0).reshape(H * W, C)  # the BHWD layout of the original
    out = None
    weights = (wx * wy, (1 - wx) * wy, wx * (1 - wy), (1 - wx) * (1 - wy))  # per point, as the C code
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        yy, xx = y0 + dy, x0 + dx
        inside = (xx >= 0) & (xx <= W - 1) & (yy >= 0) & (yy <= H - 1)  # BSS
        idx = yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1)
        # an outside neighbour reads 0: w * 0 adds nothing, so its weight is zeroed instead
        wk = torch.where(inside, weights[k].reshape(-1), torch.zeros((), dtype=features.dtype))
        term = hwc.index_select(0, idx) * wk[:, None]  # BSS C
        out = term if out is None else out + term
    B, Sh, Sw = grids.shape[:3]
    return out.reshape(B, Sh, Sw, C).permute(0, 3, 1, 2).contiguous()  # B C Sh Sw


def bilinear_roi_pooling(features: Tensor, boxes: Tensor, image_height: int, image_width: int,
                         output_size: int = 7, exact: bool = False) -> Tensor:
    """``nn.BilinearRoiPooling``: features (C, Hf, Wf) of an H x W image, boxes (B, 4)
    (xc, yc, w, h) image pixels -> (B, C, S, S).

    The grid is the original's (:func:`box_to_affine`, :func:`affine_grid_bhwd`); it is read
    with ``grid_sample`` (bilinear, ``align_corners=True``, zero padding: stnbhwd's sampler, up
    to float rounding of the interpolation weights, ~1e-7 relative) or, with ``exact=True``, by
    :func:`bilinear_sampler_bhwd` in the original's own order of float operations (5x slower)."""
    C = features.shape[0]
    if boxes.shape[0] == 0:
        return features.new_zeros((0, C, output_size, output_size))
    theta = box_to_affine(boxes, image_height, image_width)
    grids = affine_grid_bhwd(theta, output_size, output_size)  # B S S 2 (y, x)
    if exact:
        return bilinear_sampler_bhwd(features, grids)
    B = grids.shape[0]
    out = F.grid_sample(features[None], grids.flip(-1).reshape(1, B * output_size, output_size, 2), mode="bilinear",
                        padding_mode="zeros", align_corners=True)  # 1 C BS S
    return out.reshape(C, B, output_size, output_size).transpose(0, 1).contiguous()


# ---- image.scale (torch/image) -------------------------------------------------------------
def torch7_scale_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """``image.scale(img, size)``: the longest side becomes ``size``, the other
    ``floor(side * size / longest)`` (Lua numbers truncated to integers), at least 1."""
    m = max(height, width)
    return max(int(math.floor(height * size / m)), 1), max(int(math.floor(width * size / m)), 1)


def _scale_linear_axis(src: np.ndarray, dst_len: int) -> np.ndarray:
    """torch/image ``scaleLinear_rowcol`` along axis 0 of ``src`` (L, ...) in float64 with the
    float32 position arithmetic of the C code."""
    src_len = src.shape[0]
    if dst_len == src_len:
        return src.copy()
    out = np.empty((dst_len,) + src.shape[1:], dtype=src.dtype)
    f32 = np.float32
    if dst_len > src_len:
        if src_len == 1:
            out[:] = src[0]
            return out
        scale = f32(src_len - 1) / f32(dst_len - 1)
        di = np.arange(dst_len - 1)
        si_f = di.astype(f32) * scale  # float32
        si_i = si_f.astype(np.int64)
        frac = (si_f - si_i.astype(f32)).astype(f32)
        shape = (-1,) + (1,) * (src.ndim - 1)
        one_minus = (f32(1) - frac).astype(np.float64).reshape(shape)  # (1 - si_f) in float
        frac = frac.astype(np.float64).reshape(shape)
        out[:-1] = one_minus * src[si_i] + frac * src[si_i + 1]
        out[-1] = src[-1]
        return out
    # shrink: area average, accumulated in float32 (``float acc, n`` in the C code)
    scale = f32(src_len) / f32(dst_len)
    si0_i, si0_f = 0, f32(0)
    for di in range(dst_len):
        si1_f = f32(f32(di + 1) * scale)
        si1_i = int(si1_f)
        si1_f = f32(si1_f - f32(si1_i))
        w0 = f32(1) - si0_f
        acc = (float(w0) * src[si0_i]).astype(f32)
        n = w0
        for si in range(si0_i + 1, si1_i):
            acc = (acc.astype(np.float64) + src[si]).astype(f32)
            n = f32(n + f32(1))
        if si1_i < src_len:
            acc = (acc.astype(np.float64) + float(si1_f) * src[si1_i]).astype(f32)
            n = f32(n + si1_f)
        out[di] = (acc / n).astype(f32)
        si0_i, si0_f = si1_i, si1_f
    return out


def torch7_image_scale(image: np.ndarray, size: int) -> np.ndarray:
    """``image.scale(image.load(path, 3), size):float()`` of ``run_model.lua``.

    image: uint8 (H, W, 3) RGB. Returns float32 (H', W', 3) RGB in [0, 1]: bytes times 1/255 in
    float64 (``image.load`` into the default DoubleTensor), rows resized first then columns
    (bilinear when enlarging: the first and last pixels map onto each other; area average when
    shrinking), then rounded to float32.
    """
    h, w = image.shape[:2]
    nh, nw = torch7_scale_size(h, w, size)
    src = image.astype(np.float64) * (1.0 / 255.0)  # H W 3
    tmp = _scale_linear_axis(src.transpose(1, 0, 2), nw).transpose(1, 0, 2)  # H W' 3
    out = _scale_linear_axis(tmp, nh)  # H' W' 3
    return out.astype(np.float32)


def original_to_image_pixels(boxes_xywh: np.ndarray, resized_hw: Tuple[int, int],
                             image_hw: Tuple[int, int]) -> np.ndarray:
    """Boxes as ``run_model.lua`` reports them ((x, y, w, h), x/y the 1-based top-left pixel of
    the resized image) -> the project's ``[x, y, w, h]`` in continuous 0-based pixels of the
    original image: ``x0 = (x - 1) * W / W'``, ``w0 = w * W / W'`` (same for y with H / H')."""
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    sy = image_hw[0] / float(resized_hw[0])
    sx = image_hw[1] / float(resized_hw[1])
    return np.stack([(b[:, 0] - 1) * sx, (b[:, 1] - 1) * sy, b[:, 2] * sx, b[:, 3] * sy], axis=1)
