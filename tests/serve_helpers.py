"""Shared pieces of the service tests: a tiny real checkpoint with a joint embedding, a folder of
images with coloured patches, a region index over them, and PNG bytes of test scenes."""
from __future__ import annotations

import io
import os
import socket
import struct
import zlib

import numpy as np
from PIL import Image

from fake_model import save_tiny_checkpoint
from infer_images import scene

EMBED_OPTS = ["MODEL.EMBEDDING.ENABLED", True, "MODEL.EMBEDDING.DIM", 8, "MODEL.EMBEDDING.WORD_SIZE", 8,
              "MODEL.EMBEDDING.HIDDEN_SIZE", 8, "INPUT.MAX_SIZE", 96]


def png_bytes(img: np.ndarray, fmt: str = "PNG") -> bytes:
    b = io.BytesIO()
    Image.fromarray(img).save(b, fmt)
    return b.getvalue()


def scene_png(w: int = 320, h: int = 240) -> bytes:
    return png_bytes(scene(w, h)[0])


def bomb_png(w: int = 30000, h: int = 30000) -> bytes:
    """A small PNG whose header declares w x h pixels (what a decompression bomb looks like)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" + b"\x00" * ((w + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(64)) + comp.flush()  # only the first rows: truncated anyway
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def build_assets(root: str) -> dict:
    """Checkpoint, images and index under ``root``; returns their paths."""
    from densecap.retrieval.index import index_images
    from densecap.retrieval.search import RetrievalModel

    os.makedirs(root, exist_ok=True)
    ckpt = os.path.join(root, "model.pth")
    save_tiny_checkpoint(ckpt, seed=0, opts=EMBED_OPTS)
    images = os.path.join(root, "images")
    os.makedirs(os.path.join(images, "sub"), exist_ok=True)
    paths = []
    for i, (w, h) in enumerate([(160, 120), (120, 160), (200, 150), (150, 150), (128, 96)]):
        img, _ = scene(w, h)
        img = np.roll(img, 7 * i, axis=1)
        p = os.path.join(images, "sub" if i == 4 else "", f"im{i}.png")
        Image.fromarray(img).save(p)
        paths.append(p)
    with open(os.path.join(images, "not_indexed.png"), "wb") as f:
        f.write(scene_png(64, 48))
    index = os.path.join(root, "index")
    rm = RetrievalModel.from_checkpoint(ckpt, device="cpu")
    index_images(rm, paths, index, batch_size=2, progress=False)
    return {"root": root, "ckpt": ckpt, "images": images, "paths": paths, "index": index}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
