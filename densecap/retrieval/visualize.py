"""Contact sheets: a grid of image tiles, each with one box and its caption drawn, plus a title.

Used by ``tools/retrieve.py query --output`` (the top hits) and ``tools/cluster.py`` (one sheet per
cluster). Box drawing reuses :func:`densecap.inference.visualize.draw_dense_captions`.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np

from densecap.data.image_io import ImageReadError, read_image
from densecap.inference.visualize import _ascii, draw_dense_captions, write_jpeg

logger = logging.getLogger(__name__)


def _fit_tile(img: np.ndarray, tile: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    s = tile / max(h, w)
    img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    out = np.full((tile, tile, 3), 32, np.uint8)
    y0, x0 = (tile - img.shape[0]) // 2, (tile - img.shape[1]) // 2
    out[y0 : y0 + img.shape[0], x0 : x0 + img.shape[1]] = img
    return out


def _text_lines(lines: Sequence[str], width: int, scale: float = 0.5, color=(255, 255, 255), bg=(24, 24, 24)) -> np.ndarray:
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    lh = int(24 * scale / 0.5)
    out = np.full((max(1, len(lines)) * lh + 8, width, 3), bg, np.uint8)
    for i, text in enumerate(lines):
        text = _ascii(text)
        while text and cv2.getTextSize(text, font, scale, 1)[0][0] > width - 8:
            text = text[:-4] + "..." if len(text) > 4 else ""
        cv2.putText(out, text, (4, (i + 1) * lh), font, scale, color, 1, cv2.LINE_AA)
    return out


def contact_sheet(
    tiles: Sequence[Dict],
    path: str,
    *,
    title: Optional[Sequence[str]] = None,
    tile: int = 256,
    cols: int = 5,
) -> str:
    """Write a JPEG grid. Each tile dict: ``{"image": path, "box": [x, y, w, h] or None,
    "caption": str (drawn on the box), "label": str (printed under the tile)}``."""
    cols = max(1, min(cols, len(tiles) or 1))
    cells: List[np.ndarray] = []
    cache: Dict[str, np.ndarray] = {}
    for t in tiles:
        try:
            img = cache.get(t["image"])
            if img is None:
                img = cache[t["image"]] = read_image(t["image"])
            if t.get("box") is not None:
                img = draw_dense_captions(img, np.asarray([t["box"]], np.float32), [t.get("caption", "")], topk=1,
                                          min_side=tile, max_side=max(tile * 2, 512))
            cell = _fit_tile(img, tile)
        except ImageReadError as e:
            logger.warning("contact sheet: %s", e)
            cell = np.full((tile, tile, 3), 64, np.uint8)
        cells.append(np.concatenate([cell, _text_lines([t.get("label", "")], tile, 0.4)], axis=0))
    if not cells:
        cells.append(_text_lines(["(no results)"], tile))
    ch, cw = cells[0].shape[:2]
    rows = (len(cells) + cols - 1) // cols
    grid = np.full((rows * (ch + 4), cols * (cw + 4), 3), 0, np.uint8)
    for i, c in enumerate(cells):
        r, k = divmod(i, cols)
        grid[r * (ch + 4) : r * (ch + 4) + c.shape[0], k * (cw + 4) : k * (cw + 4) + c.shape[1]] = c
    if title:
        grid = np.concatenate([_text_lines(list(title), grid.shape[1], 0.55), grid], axis=0)
    write_jpeg(path, grid)
    return path


def hits_sheet(result, path: str, *, tile: int = 256, cols: int = 5) -> str:
    """Contact sheet of a :class:`densecap.retrieval.search.SearchResult`."""
    tiles = [
        {"image": h["image"], "box": h["box"], "caption": h["caption"], "label": f"#{h['rank']} {h['score']:.2f}"}
        for h in result.hits
    ]
    title = [f"query: {result.query}  (mode {result.mode}, {result.num_regions} regions)"]
    if result.oov:
        title.append("not in vocabulary (searched as <UNK>): " + ", ".join(result.oov))
    return contact_sheet(tiles, path, title=title, tile=tile, cols=cols)
