"""Test images for the inference tests: every pixel mode, EXIF rotation, huge/tiny, and bad files.

Every good image shows (in its DISPLAYED frame) a dark background with a red patch and a blue
patch at known places; ``PATCHES[name]`` gives their boxes [x, y, w, h] in displayed pixels and
``SIZES[name]`` the displayed (width, height).
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

RED, BLUE, BG = (220, 30, 30), (30, 40, 220), (40, 40, 40)


def scene(w: int, h: int) -> Tuple[np.ndarray, Dict[str, List[float]]]:
    """RGB uint8 (h, w, 3) with a red patch (upper left) and a blue patch (lower right)."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BG
    red = [round(0.1 * w), round(0.1 * h), round(0.35 * w), round(0.3 * h)]
    blue = [round(0.55 * w), round(0.55 * h), round(0.35 * w), round(0.35 * h)]
    for (x, y, bw, bh), c in ((red, RED), (blue, BLUE)):
        img[y:y + bh, x:x + bw] = c
    return img, {"red": [float(v) for v in red], "blue": [float(v) for v in blue]}


def make_good_images(d: str) -> Tuple[Dict[str, Dict[str, List[float]]], Dict[str, Tuple[int, int]]]:
    """Write the good images into ``d``; returns (PATCHES, SIZES) keyed by file name."""
    os.makedirs(d, exist_ok=True)
    patches, sizes = {}, {}

    def add(name, w, h):
        img, p = scene(w, h)
        patches[name], sizes[name] = p, (w, h)
        return img

    Image.fromarray(add("rgb.jpg", 320, 240)).save(os.path.join(d, "rgb.jpg"), quality=95)
    Image.fromarray(add("1234.png", 320, 240)).save(os.path.join(d, "1234.png"))  # integer stem -> image_id
    Image.fromarray(add("grey.png", 200, 160)).convert("L").save(os.path.join(d, "grey.png"))
    rgba = np.dstack([add("rgba.png", 240, 200), np.full((200, 240), 255, np.uint8)])
    rgba[:10, :10, 3] = 0  # a transparent corner
    Image.fromarray(rgba, "RGBA").save(os.path.join(d, "rgba.png"))
    Image.fromarray(add("palette.png", 240, 180)).convert("P", palette=Image.ADAPTIVE, colors=8).save(os.path.join(d, "palette.png"))
    luma = add("deep16.png", 160, 120).astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    g16 = np.round(luma * 257).astype(np.uint16)  # 16-bit grey, full range
    Image.fromarray(g16).save(os.path.join(d, "deep16.png"))
    Image.fromarray(add("cmyk.jpg", 240, 180)).convert("CMYK").save(os.path.join(d, "cmyk.jpg"), quality=95)
    # EXIF orientation 6: stored sideways (landscape), displayed rotated 90 degrees clockwise (portrait)
    displayed = add("exif_rot.jpg", 180, 300)
    stored = np.ascontiguousarray(np.rot90(displayed, k=1))  # counter-clockwise; display turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(os.path.join(d, "exif_rot.jpg"), quality=95, exif=exif)
    Image.fromarray(add("big.jpg", 3000, 2000)).save(os.path.join(d, "big.jpg"), quality=80)
    Image.fromarray(add("tiny.png", 10, 8)).save(os.path.join(d, "tiny.png"))
    return patches, sizes


def make_bad_inputs(d: str) -> Dict[str, str]:
    """Bad inputs in ``d``: name -> the word its error message must contain."""
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "zero.jpg"), "wb").close()
    img, _ = scene(200, 150)
    Image.fromarray(img).save(os.path.join(d, "full.jpg"), quality=90)
    data = open(os.path.join(d, "full.jpg"), "rb").read()
    os.remove(os.path.join(d, "full.jpg"))
    with open(os.path.join(d, "trunc.jpg"), "wb") as f:
        f.write(data[: len(data) // 3])
    with open(os.path.join(d, "text.jpg"), "w") as f:
        f.write("this is not an image\n")
    os.makedirs(os.path.join(d, "folder.jpg"))
    with open(os.path.join(d, "notes.txt"), "w") as f:  # not an image name: ignored in folder scans
        f.write("ignore me")
    return {"zero.jpg": "empty", "trunc.jpg": "truncated", "text.jpg": "not an image", "folder.jpg": "directory"}
