"""``results.json``: what ``tools/infer.py`` found, in the original DenseCap's format plus more.

Layout::

    {
      "results": [
        {
          "img_name": "1234.jpg",          # file base name (the original's key); frames: "clip.mp4#120"
          "image_id": 1234,                # int(stem) when the stem is an integer, else null
          "file_name": "photos/1234.jpg",  # the path as found (null for video/webcam frames)
          "name": "1234",                  # unique in this run: vis/<name>.jpg, features/<name>.npz
          "width": 640, "height": 480,     # the image as displayed (EXIF orientation applied)
          "boxes": [[x, y, w, h], ...],    # those pixels, descending score
          "scores": [...],                 # sigmoid of objectness, in [0, 1]
          "captions": ["a red car", ...],
          "caption_logprobs": [...],       # log-probability of each caption
          "given_boxes": false,            # true: boxes are the ones given with --boxes, in order
          # video/webcam frames only: "source": "clip.mp4", "frame_index": 120
          # with --image-caption:   "image_caption": "...", "image_caption_logprob": -4.2
        }, ...
      ],
      "errors": [{"path": "bad.jpg", "error": "corrupt or truncated image (...)"}, ...],
      "opt": {...}                         # the options of the run (image_size, thresholds, ...)
    }

Unlike the original (boxes in the 720-pixel frame), boxes are in original-image pixels, the frame
``tools/evaluate.py`` expects. The file is written atomically (never half-written).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from densecap.utils.io import atomic_write_json

from .predictor import Prediction

FORMAT_VERSION = 1


def image_id_from_name(file_name: str) -> Optional[int]:
    """``int(stem)`` when the file's stem is an integer (``"1234.jpg"`` -> 1234), else None."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    if stem.isascii() and stem.isdigit():
        return int(stem)
    if stem.startswith("-") and stem[1:].isascii() and stem[1:].isdigit():
        return int(stem)
    return None


def _floats(a: np.ndarray) -> List:
    """JSON numbers: float32 values in their shortest exact form (``0.1`` not ``0.10000000149``),
    float64 values (given boxes) unchanged."""
    a = np.asarray(a)
    if a.dtype != np.float32:
        return a.astype(np.float64).tolist()
    flat = [float(str(v)) for v in a.reshape(-1)]  # str(np.float32) is its shortest round-trip form
    if a.ndim <= 1:
        return flat
    cols = int(np.prod(a.shape[1:]))
    return [flat[i:i + cols] for i in range(0, len(flat), cols)] if a.ndim == 2 else np.array(flat).reshape(a.shape).tolist()


def prediction_record(
    pred: Prediction,
    *,
    img_name: str,
    name: str,
    file_name: Optional[str] = None,
    image_id: Any = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """One entry of ``results`` (see the module docstring)."""
    rec: Dict[str, Any] = {
        "img_name": img_name,
        "image_id": image_id,
        "file_name": file_name,
        "name": name,
        "width": int(pred.width),
        "height": int(pred.height),
        "boxes": _floats(np.asarray(pred.boxes).reshape(-1, 4)),
        "scores": _floats(pred.scores),
        "captions": list(pred.captions),
        "caption_logprobs": _floats(pred.caption_logprobs),
        "given_boxes": bool(pred.given_boxes),
    }
    if extra:
        rec.update(extra)
    if pred.image_caption is not None:
        rec["image_caption"] = pred.image_caption
        rec["image_caption_logprob"] = pred.image_caption_logprob
        if pred.image_captions is not None:
            rec["image_captions"] = [{"caption": c, "logprob": lp} for c, lp in pred.image_captions]
    return rec


class ResultsWriter:
    """Collects records and errors; :meth:`write` saves ``results.json`` atomically (call it as
    often as you like, e.g. periodically during a long video and once at the end)."""

    def __init__(self, path: str, opt: Optional[Dict[str, Any]] = None) -> None:
        self.path = path
        self.opt = dict(opt or {})
        self.results: List[Dict[str, Any]] = []
        self.errors: List[Dict[str, str]] = []

    def add(self, record: Dict[str, Any]) -> None:
        self.results.append(record)

    def add_error(self, path: str, error: str) -> None:
        self.errors.append({"path": str(path), "error": str(error)})

    def to_dict(self) -> Dict[str, Any]:
        return {"results": self.results, "errors": self.errors, "opt": dict(self.opt, format_version=FORMAT_VERSION)}

    def write(self) -> None:
        atomic_write_json(self.path, self.to_dict())


def load_results(path: str) -> Dict[str, Any]:
    """Read a results.json (raises ValueError naming the file when it is not one)."""
    with open(path, "r", encoding="utf-8") as f:
        try:
            d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(d, dict) or not isinstance(d.get("results"), list):
        raise ValueError(f"{path}: not a results.json (no 'results' list)")
    d.setdefault("errors", [])
    d.setdefault("opt", {})
    return d
