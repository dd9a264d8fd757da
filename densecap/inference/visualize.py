"""Overlays: the top boxes of an image with their captions, drawn with OpenCV.

The drawing is made readable at any input size: the canvas is the image scaled so that its longest
side is between ``min_side`` (512: tiny images are enlarged) and ``max_side`` (2048: huge photos are
reduced), and line widths and the font follow the canvas size. Each box has its own colour
(:func:`palette`, shared with the HTML viewer); its caption sits on a label filled with that colour,
above the box when there is room, otherwise inside it, and always inside the image (captions too
wide for the image are shortened with "...").
"""
from __future__ import annotations

import colorsys
import logging
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from densecap.utils.io import atomic_open

logger = logging.getLogger(__name__)

RGB = Tuple[int, int, int]


def palette(n: int) -> List[RGB]:
    """``n`` distinct, saturated RGB colours (golden-ratio hue steps, alternating brightness)."""
    out = []
    for i in range(n):
        h = (0.03 + i * 0.6180339887498949) % 1.0
        s = 0.85 if i % 3 != 2 else 0.6
        v = 1.0 if i % 2 == 0 else 0.8
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        out.append((int(round(r * 255)), int(round(g * 255)), int(round(b * 255))))
    return out


def text_color(bg: RGB) -> RGB:
    """Black or white, whichever reads better on ``bg``."""
    lum = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (0, 0, 0) if lum > 140 else (255, 255, 255)


def _ascii(s: str) -> str:
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in s)


def _overlaps(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


class _Style:
    def __init__(self, height: int, width: int) -> None:
        import cv2

        self.font = cv2.FONT_HERSHEY_SIMPLEX
        # cap height of the text in canvas pixels: ~2.5% of the canvas' geometric mean side, so
        # panoramas do not get letters taller than a sixth of the picture
        target_h = max(11.0, min(0.025 * math.sqrt(height * width), height / 6.0))
        (_, base_h), _ = cv2.getTextSize("Ag", self.font, 1.0, 1)
        self.scale = target_h / base_h
        self.text_thick = max(1, int(round(target_h / 14)))
        self.box_thick = max(2, int(round(math.sqrt(height * width) / 300)))
        self.pad = max(2, int(round(target_h * 0.3)))

    def size(self, text: str) -> Tuple[int, int, int]:
        import cv2

        (w, h), base = cv2.getTextSize(text, self.font, self.scale, self.text_thick)
        return w, h, base


def _fit(style: _Style, text: str, max_w: int) -> str:
    if style.size(text)[0] + 2 * style.pad <= max_w:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix that fits with "..."
        mid = (lo + hi + 1) // 2
        if style.size(text[:mid] + "...")[0] + 2 * style.pad <= max_w:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "..."


@dataclass
class Label:
    text: str  # as drawn (shortened with "..." when too wide)
    x: int
    y: int
    w: int
    h: int
    text_h: int

    @property
    def rect(self) -> Tuple[int, int, int, int]:
        return (self.x, self.y, self.x + self.w, self.y + self.h)


@dataclass
class Layout:
    """Where everything goes on the canvas (canvas pixels)."""

    scale: float  # canvas / image
    canvas_size: Tuple[int, int]  # (height, width)
    boxes: List[Tuple[int, int, int, int]]  # x1 y1 x2 y2, clipped to the canvas
    labels: List[Label]
    font_scale: float
    box_thickness: int


def layout(
    image_hw: Tuple[int, int],
    boxes: np.ndarray,
    captions: Sequence[str],
    *,
    topk: int = 10,
    min_side: int = 512,
    max_side: int = 2048,
) -> Layout:
    """Canvas size, box rectangles and label placement for :func:`draw_dense_captions`.

    Labels go above their box, else inside its top, else below it, the first spot that does not
    cover an earlier (better) label; all labels lie fully inside the canvas."""
    h, w = int(image_hw[0]), int(image_hw[1])
    longest = max(h, w)
    s = 1.0
    if min_side and longest < min_side:
        s = min_side / longest
    elif max_side and longest > max_side:
        s = max_side / longest
    cw, ch = max(1, round(w * s)), max(1, round(h * s))
    style = _Style(ch, cw)
    k = min(int(topk), len(captions)) if topk > 0 else len(captions)
    rects = []
    for i in range(k):
        x, y, bw, bh = (float(v) * s for v in boxes[i])
        x1, y1 = int(round(min(max(x, 0), cw - 1))), int(round(min(max(y, 0), ch - 1)))
        x2, y2 = int(round(min(max(x + bw, 0), cw - 1))), int(round(min(max(y + bh, 0), ch - 1)))
        rects.append((x1, y1, max(x2, x1), max(y2, y1)))
    placed: List[Tuple[int, int, int, int]] = []
    labels: List[Label] = []
    for i in range(k):  # best first, so the best boxes get the natural spot
        text = _fit(style, _ascii(str(captions[i])), cw)
        tw, th, base = style.size(text)
        lw, lh = min(cw, tw + 2 * style.pad), min(ch, th + base + 2 * style.pad)
        x1, y1, x2, y2 = rects[i]
        lx = max(0, min(x1, cw - lw))
        ly = None
        for cy in (y1 - lh, y1 + style.box_thick, y2 + style.box_thick):
            cy = max(0, min(cy, ch - lh))
            if not any(_overlaps((lx, cy, lx + lw, cy + lh), p) for p in placed):
                ly = cy
                break
        if ly is None:  # every spot taken: step down from above the box until free or out of room
            ly = max(0, min(y1 - lh, ch - lh))
            while any(_overlaps((lx, ly, lx + lw, ly + lh), p) for p in placed) and ly + lh < ch:
                ly = min(ly + lh, ch - lh)
        lab = Label(text, lx, ly, lw, lh, th)
        placed.append(lab.rect)
        labels.append(lab)
    return Layout(s, (ch, cw), rects, labels, style.scale, style.box_thick)


def draw_dense_captions(
    image: np.ndarray,
    boxes: np.ndarray,
    captions: Sequence[str],
    *,
    topk: int = 10,
    min_side: int = 512,
    max_side: int = 2048,
    image_caption: Optional[str] = None,
) -> np.ndarray:
    """Return an RGB uint8 canvas with the first ``topk`` boxes ``[x, y, w, h]`` (image pixels,
    best first) and their captions. The canvas is the image rescaled to a readable size (see the
    module docstring); pass ``min_side=0, max_side=0`` to keep the image's own size."""
    import cv2

    h, w = image.shape[:2]
    lay = layout((h, w), boxes, captions, topk=topk, min_side=min_side, max_side=max_side)
    ch, cw = lay.canvas_size
    if (ch, cw) != (h, w):
        interp = cv2.INTER_AREA if lay.scale < 1 else cv2.INTER_LINEAR
        canvas = cv2.resize(image, (cw, ch), interpolation=interp)
    else:
        canvas = image.copy()
    canvas = np.ascontiguousarray(canvas)
    style = _Style(ch, cw)
    k = len(lay.boxes)
    colors = palette(k)
    # boxes first, best on top; then labels, best on top, so no line crosses a label
    for i in reversed(range(k)):
        x1, y1, x2, y2 = lay.boxes[i]
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 0, 0), style.box_thick + 2, cv2.LINE_AA)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colors[i], style.box_thick, cv2.LINE_AA)
    for i in reversed(range(k)):
        lab = lay.labels[i]
        cv2.rectangle(canvas, (lab.x, lab.y), (lab.x + lab.w - 1, lab.y + lab.h - 1), colors[i], -1)
        cv2.putText(canvas, lab.text, (lab.x + style.pad, lab.y + style.pad + lab.text_h), style.font, style.scale,
                    text_color(colors[i]), style.text_thick, cv2.LINE_AA)
    if image_caption:
        text = _fit(style, _ascii(image_caption), cw)
        tw, th, base = style.size(text)
        bh = min(ch, th + base + 2 * style.pad)
        band = canvas[ch - bh:].astype(np.float32)
        canvas[ch - bh:] = (band * 0.35).astype(np.uint8)
        cv2.putText(canvas, text, (style.pad, ch - style.pad - base), style.font, style.scale,
                    (255, 255, 255), style.text_thick, cv2.LINE_AA)
    return canvas


def write_jpeg(path: str, image_rgb: np.ndarray, quality: int = 90) -> None:
    """Write an RGB image as JPEG, atomically."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image_rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise IOError(f"{path}: JPEG encoding failed")
    with atomic_open(path, "wb") as f:
        f.write(buf.tobytes())
