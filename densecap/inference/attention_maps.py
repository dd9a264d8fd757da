"""Attention figures for whole-image captions (Show, Attend and Tell style).

One matplotlib figure per image: the image with its caption, then one panel per generated word
with the attention map behind that word upsampled (bilinear, optionally Gaussian-smoothed) and
blended over the image. ``tools/infer.py --attention-maps`` writes them; they can also be made
directly::

    from densecap.inference.attention_maps import caption_image_with_attention
    caption_image_with_attention(model, "img.jpg", "img_attention.png")

Shapes: T: words, h, w: attention grid, H, W: image.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["upsample_attention", "attention_figure", "save_attention_figure", "caption_image_with_attention"]


def upsample_attention(att: np.ndarray, image_hw: Tuple[int, int], cell: Optional[Tuple[float, float]] = None, sigma: float = 0.0) -> np.ndarray:
    """One (h, w) attention map -> (H, W) float in the image's pixels.

    ``cell`` is the size (cell_h, cell_w) in image pixels of one attention cell, counted from the
    top-left corner (the grid may extend past the image over the padding); None stretches the
    grid over the whole image. Bilinear interpolation between cell centres, then an optional
    Gaussian blur of ``sigma`` cells.
    """
    import cv2

    H, W = int(image_hw[0]), int(image_hw[1])
    att = np.asarray(att, dtype=np.float32)
    h, w = att.shape
    ch, cw = (H / h, W / w) if cell is None else (float(cell[0]), float(cell[1]))
    gh, gw = max(1, int(round(h * ch))), max(1, int(round(w * cw)))
    up = cv2.resize(att, (gw, gh), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((H, W), dtype=np.float32)
    out[: min(H, gh), : min(W, gw)] = up[:H, :W]
    if sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma * cw, sigmaY=sigma * ch)
    return out


def attention_figure(
    image: np.ndarray,
    words: Sequence[str],
    attention: np.ndarray,
    *,
    caption: Optional[str] = None,
    cell: Optional[Tuple[float, float]] = None,
    sigma: float = 0.5,
    alpha: float = 0.55,
    cols: int = 5,
    panel_inches: float = 2.4,
):
    """A matplotlib Figure: the image and caption, then one panel per word with its map.

    image uint8 (H, W, 3) RGB; attention (T, h, w) with T >= len(words); see
    :func:`upsample_attention` for ``cell`` and ``sigma``. Each map is min-max scaled (its least
    attended pixel on the image = 0, its most attended = 1), as the figures of Xu et al.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    attention = np.asarray(attention, dtype=np.float32)
    n = len(words) + 1
    cols = max(1, min(cols, n))
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel_inches, rows * (panel_inches + 0.35)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    H, W = image.shape[:2]
    axes[0, 0].imshow(image)
    text = caption if caption is not None else " ".join(words)
    axes[0, 0].set_title(text if len(text) <= 40 else text[:38] + "...", fontsize=7)
    for t, word in enumerate(words):
        ax = axes[(t + 1) // cols, (t + 1) % cols]
        m = upsample_attention(attention[t], (H, W), cell, sigma)
        lo = float(m.min())
        m = np.clip((m - lo) / max(float(m.max()) - lo, 1e-8), 0.0, 1.0)  # min-max per word, as Xu et al.'s figures
        ax.imshow(image)
        ax.imshow(m, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0, interpolation="bilinear")
        ax.set_title(word, fontsize=10)
    fig.tight_layout()
    return fig


def save_attention_figure(path: str, image: np.ndarray, words: Sequence[str], attention: np.ndarray, **kw) -> str:
    """:func:`attention_figure` saved to ``path`` (PNG, 100 dpi); returns ``path``."""
    import matplotlib.pyplot as plt

    fig = attention_figure(image, words, attention, **kw)
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def caption_image_with_attention(model, image_path: str, out_path: str, max_size: Optional[int] = None, **kw) -> dict:
    """Caption one image file with an ImageCaptioner and save its attention figure.

    Returns the model's output dict for the image (``image_caption``, ``attention`` ...); no
    figure is written for models without attention (NIC).
    """
    import torch

    from densecap.data.image_io import read_image, resize_longest_side

    img = read_image(image_path)
    size = int(max_size) if max_size else max(img.shape[:2])
    transform = getattr(model, "transform", None)  # the model's image transform, if it has one
    resized, scale = transform.resize(img, size) if transform is not None else resize_longest_side(img, size)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model([{"image": torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1), "image_id": 0}])[0]
    finally:
        model.train(was)
    if out.get("attention") is None:
        logger.info("%s: no attention maps (model without attention)", image_path)
        return out
    cell = out.get("attention_cell")
    cell = None if cell is None else (cell[0] / scale, cell[1] / scale)  # original-image pixels
    words = out["image_caption"].split()
    save_attention_figure(out_path, img, words, out["attention"].numpy(), caption=out["image_caption"], cell=cell, **kw)
    return out
