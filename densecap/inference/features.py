"""Region features (``tools/infer.py --extract-features``): one ``.npz`` file per image.

``features/<name>.npz`` (``<name>`` is the image's unique ``name`` in results.json) holds, for the
N regions reported for that image (the same boxes, in the same order, as results.json)::

    boxes            float32 (N, 4)   [x, y, w, h] in original-image pixels (EXIF orientation
                                      applied), descending score (or the --boxes order)
    scores           float32 (N,)     sigmoid of objectness
    region_codes     float32 (N, D)   the recognition network's region codes (the vectors the
                                      language model is conditioned on; D = MODEL.ROI.FC_DIM)
    captions         str     (N,)     numpy unicode array (loads without pickle)
    caption_logprobs float32 (N,)
    image_size       int64   (2,)     (height, width) of the image as displayed
    img_name         str     ()       results.json's img_name
    format_version   int64   ()       1

The arrays are plain numpy (no pickled objects): ``np.load(path)`` reads them with the default
``allow_pickle=False``; :func:`load_features` returns them as a dict (``captions`` as a list of
str, ``image_size`` as a tuple, ``img_name`` as str). This replaces the original's
``extract_features.lua`` (HDF5); unlike it, every reported box is stored, not a fixed 100.
"""
from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np

from densecap.utils.io import atomic_open

from .predictor import Prediction

FORMAT_VERSION = 1
KEYS = ("boxes", "scores", "region_codes", "captions", "caption_logprobs", "image_size", "img_name", "format_version")


def feature_arrays(pred: Prediction, img_name: str) -> Dict[str, np.ndarray]:
    n = len(pred.captions)
    codes = pred.region_codes
    if codes is None:
        if n:
            raise ValueError("the model returned no region_codes; cannot extract features")
        codes = np.zeros((0, 0), np.float32)
    codes = np.asarray(codes, dtype=np.float32)
    if codes.ndim != 2 or codes.shape[0] != n:
        raise ValueError(f"region_codes of shape {codes.shape} for {n} regions")
    return {
        "boxes": np.asarray(pred.boxes, dtype=np.float32).reshape(n, 4),
        "scores": np.asarray(pred.scores, dtype=np.float32).reshape(n),
        "region_codes": codes,
        "captions": np.array(list(pred.captions), dtype=np.str_).reshape(n),
        "caption_logprobs": np.asarray(pred.caption_logprobs, dtype=np.float32).reshape(n),
        "image_size": np.array([pred.height, pred.width], dtype=np.int64),
        "img_name": np.array(img_name, dtype=np.str_),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
    }


def save_features(path: str, pred: Prediction, img_name: str) -> None:
    """Write ``path`` (.npz, uncompressed, atomically) for one image's prediction."""
    arrays = feature_arrays(pred, img_name)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def load_features(path: str) -> Dict[str, Any]:
    """Read a features file; returns the arrays (``img_name`` as str, ``image_size`` as a tuple)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: features file not found")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in KEYS if k not in z.files]
        if missing:
            raise ValueError(f"{path}: not a densecap features file (missing {missing})")
        d = {k: z[k] for k in z.files}
    d["img_name"] = str(d["img_name"])
    d["format_version"] = int(d["format_version"])
    d["image_size"] = tuple(int(v) for v in d["image_size"])
    d["captions"] = [str(c) for c in d["captions"]]
    return d
