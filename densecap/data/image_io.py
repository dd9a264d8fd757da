"""The project's one image loader.

``read_image`` returns an RGB ``uint8`` array of shape (H, W, 3) in the orientation a person sees
(EXIF rotation applied). Greyscale, RGBA/LA (composited on white), palette, 16-bit and CMYK images
are converted. Any failure raises :class:`ImageReadError` naming the file and the problem.
``decode_image`` does the same for bytes already in memory (an upload), optionally refusing images
of more than ``max_pixels`` pixels before decoding them (decompression bombs).
"""
from __future__ import annotations

import io
import os
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(IOError):
    """An image could not be read; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _to_rgb(img: Image.Image, alpha: str = "white") -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        scale = 255.0 / (65535.0 if hi > 255 else 255.0)
        arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
        arr = ((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        if alpha == "drop":  # the colour channels as stored (Torch7's image.load)
            return rgba.convert("RGB")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV ...
    return img.convert("RGB")


def read_image(path: str, *, exif_transpose: bool = True, alpha: str = "white") -> np.ndarray:
    """Read ``path`` as an RGB uint8 array (H, W, 3), EXIF orientation applied.

    ``exif_transpose=False`` keeps the pixels as stored; ``alpha="drop"`` keeps the colour
    channels of an image with transparency as they are instead of compositing them on white.
    Both together read an image as the original DenseCap's ``image.load(path, 3)`` does."""
    if alpha not in ("white", "drop"):
        raise ValueError(f"alpha must be 'white' or 'drop', got {alpha!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ImageReadError(path, "is a directory, not an image file")
    if not os.path.exists(path):
        raise ImageReadError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    return _decode(path, path, exif_transpose=exif_transpose, alpha=alpha)


def decode_image(data: bytes, name: str = "<bytes>", *, max_pixels: Optional[int] = None,
                 exif_transpose: bool = True, alpha: str = "white") -> np.ndarray:
    """Decode image file bytes as :func:`read_image` reads a file; ``name`` names it in errors.

    ``max_pixels``: refuse (``ImageReadError``) an image whose header declares more pixels, before
    its pixels are decoded. Pillow's own ``Image.MAX_IMAGE_PIXELS`` guard applies as well."""
    if not data:
        raise ImageReadError(name, "file is empty (0 bytes)")
    if alpha not in ("white", "drop"):
        raise ValueError(f"alpha must be 'white' or 'drop', got {alpha!r}")
    return _decode(io.BytesIO(data), name, max_pixels=max_pixels, exif_transpose=exif_transpose, alpha=alpha)


def _decode(source, name: str, *, max_pixels: Optional[int] = None, exif_transpose: bool = True,
            alpha: str = "white") -> np.ndarray:
    try:
        with Image.open(source) as img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageReadError(name, f"image of {w} x {h} = {w * h} pixels is over the limit of {max_pixels} pixels")
            img.load()
            if exif_transpose:
                img = ImageOps.exif_transpose(img)
            img = _to_rgb(img, alpha)
            arr = np.asarray(img, dtype=np.uint8).copy()
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(name, f"image over Pillow's pixel limit (a decompression bomb?): {e}") from None
    except UnidentifiedImageError:
        raise ImageReadError(name, "not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data
        raise ImageReadError(name, f"corrupt or truncated image ({e})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(name, f"unexpected decoded shape {arr.shape}")
    return arr


def image_size(path: str) -> Tuple[int, int]:
    """(height, width) after EXIF rotation, without decoding the pixels."""
    with Image.open(path) as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - broken EXIF is not fatal for a size query
            orientation = 1
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return h, w


def resize_longest_side(image: np.ndarray, max_size: int) -> Tuple[np.ndarray, float]:
    """Resize so that the longest side is ``max_size`` (up or down). Returns (image, scale)."""
    import cv2

    h, w = image.shape[:2]
    scale = float(max_size) / max(h, w)
    if abs(scale - 1.0) < 1e-9:
        return image, 1.0
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (nw, nh), interpolation=interp), scale
