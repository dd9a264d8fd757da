"""The compact preprocessed form of a region-caption dataset (what training reads).

A prepared directory holds::

    vocab.json          {"idx_to_token": ["<PAD>", "<START>", "<END>", "<UNK>", words...]}
    report.json         what preparation kept and dropped, and why
    <split>.npz         one file per split ("train", "val", "test"), arrays:
        image_ids        int64   (I,)       Visual Genome image id
        image_paths      str     (I,)       image file, relative to the prepared dir or absolute
        heights, widths  int32   (I,)       original image size in pixels
        region_start     int64   (I+1,)     regions of image i are [region_start[i], region_start[i+1])
        region_ids       int64   (R,)
        boxes            float32 (R, 4)     [x, y, w, h] in original-image pixels, clipped to the image
        captions         int32   (R, T)     token ids (no START/END), padded with 0 (<PAD>), T = max tokens
        caption_lengths  int16   (R,)
        coco_ids         int64   (I,)       the image's COCO id (VG image_data.json), -1 when none;
                                            absent from directories prepared before it existed

Everything is plain numpy (no pickle), so loading a split is one ``np.load``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from densecap.utils.io import atomic_open

from .tokenizer import Vocabulary

SPLITS = ("train", "val", "test")


@dataclass
class PreparedSplit:
    root: str
    split: str
    image_ids: np.ndarray
    image_paths: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    region_start: np.ndarray
    region_ids: np.ndarray
    boxes: np.ndarray
    captions: np.ndarray
    caption_lengths: np.ndarray
    coco_ids: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])

    @property
    def num_regions(self) -> int:
        return int(self.boxes.shape[0])

    def path(self, i: int) -> str:
        p = str(self.image_paths[i])
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(self.root, p))

    def regions(self, i: int) -> slice:
        return slice(int(self.region_start[i]), int(self.region_start[i + 1]))

    def caption_strings(self, i: int, vocab: Vocabulary) -> List[str]:
        """Reference captions of image i as token strings (``<UNK>`` for rare words)."""
        sl = self.regions(i)
        return [
            " ".join(vocab.idx_to_token[t] for t in row[:n])
            for row, n in zip(self.captions[sl], self.caption_lengths[sl])
        ]


def split_file(root: str, split: str) -> str:
    return os.path.join(root, f"{split}.npz")


def write_split(
    root: str,
    split: str,
    *,
    image_ids: Sequence[int],
    image_paths: Sequence[str],
    heights: Sequence[int],
    widths: Sequence[int],
    region_counts: Sequence[int],
    region_ids: np.ndarray,
    boxes: np.ndarray,
    captions: np.ndarray,
    caption_lengths: np.ndarray,
    coco_ids: Optional[Sequence[int]] = None,
) -> str:
    """Write one split atomically. Image paths are stored relative to ``root`` when possible."""
    os.makedirs(root, exist_ok=True)
    rel = []
    for p in image_paths:
        p = os.path.abspath(p)
        try:
            r = os.path.relpath(p, os.path.abspath(root))
        except ValueError:  # other drive on Windows
            r = p
        rel.append(r)
    region_start = np.zeros(len(region_counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(region_counts, dtype=np.int64), out=region_start[1:])
    assert region_start[-1] == len(boxes) == len(captions) == len(region_ids) == len(caption_lengths)
    path = split_file(root, split)
    with atomic_open(path, "wb") as f:
        np.savez(
            f,
            image_ids=np.asarray(image_ids, dtype=np.int64),
            image_paths=np.asarray(rel, dtype=str) if rel else np.zeros((0,), dtype="<U1"),
            heights=np.asarray(heights, dtype=np.int32),
            widths=np.asarray(widths, dtype=np.int32),
            region_start=region_start,
            region_ids=np.asarray(region_ids, dtype=np.int64),
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            captions=np.asarray(captions, dtype=np.int32),
            caption_lengths=np.asarray(caption_lengths, dtype=np.int16),
            coco_ids=(np.full(len(image_ids), -1, dtype=np.int64) if coco_ids is None
                      else np.asarray(coco_ids, dtype=np.int64)),
        )
    return path


def load_split(root: str, split: str) -> PreparedSplit:
    path = split_file(root, split)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: prepared split '{split}' not found; prepare the dataset first "
            f"(datasets/prepare_vg.py or python -m densecap.data.synthetic)"
        )
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return PreparedSplit(root=os.path.abspath(root), split=split, **arrays)


def load_vocab(root: str) -> Vocabulary:
    return Vocabulary.load(os.path.join(root, "vocab.json"))
