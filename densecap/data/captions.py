"""Whole-image caption datasets (for the ImageCaptioner and the image-caption head).

Sources, named in ``DATASETS.TRAIN`` / ``DATASETS.TEST``:

* ``"captions:PATH.json:SPLIT"``: a Karpathy-split JSON (``dataset_coco.json``,
  ``dataset_flickr8k.json``, ``dataset_flickr30k.json``, the synthetic dataset's ``captions.json``)::

      {"images": [{"filepath": "val2014", "filename": "x.jpg", "split": "train"|"restval"|"val"|"test",
                   "cocoid" | "image_id" | "imgid": int,
                   "sentences": [{"tokens": [...], "raw": "..."}]}]}

  ``SPLIT`` is train (which includes "restval", as Karpathy's COCO recipe), val or test; the
  image path is ``IMAGE_ROOT/filepath/filename`` (``filepath`` may be absent).
* ``"coco_captions:PATH.json"``: a COCO captions annotation file (``captions_train2014.json``:
  ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``); the image
  path is ``IMAGE_ROOT/file_name``.

``IMAGE_ROOT`` is ``DATASETS.CAPTIONS_IMAGE_ROOT`` when set, else the JSON's directory (for COCO
annotation files ``<json dir>/../train2014`` (``val2014``...) when that directory exists).

Every caption goes through :func:`densecap.data.tokenizer.tokenize` (the project's one
tokeniser; the Karpathy "tokens" field is used only when "raw" is missing). A record is::

    {"file_name": str (full path), "image_id": int, "captions": [[token, ...], ...]}

:class:`CaptionDataset` yields, per image (the ImageCaptioner's input contract)::

    image           uint8 (3, H', W') RGB, longest side resized to INPUT.MAX_SIZE (read_image +
                    resize_longest_side, the one loader)
    image_captions  int64 (K, T) the image's K captions, word ids, 0-padded, no START/END,
                    truncated to T = MODEL.IMAGE_CAPTION.MAX_TOKENS words
    gt_captions     list[str] the K reference captions (tokens joined by spaces, untruncated)
    image_id, file_name, height, width (original pixels), scale (H'/height)

An unreadable image is logged and its item is ``None`` (dropped by ``collate``).
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from .dataset import collate  # noqa: F401  (the collate function for CaptionDataset too)
from .image_io import ImageReadError, read_image, resize_longest_side
from .json_stream import load_json
from .tokenizer import Vocabulary, tokenize

logger = logging.getLogger(__name__)

__all__ = [
    "load_karpathy_json",
    "load_coco_captions",
    "load_caption_records",
    "is_caption_dataset",
    "build_caption_vocab",
    "CaptionDataset",
    "build_caption_dataset",
    "build_caption_train_loader",
    "load_caption_train_vocab",
    "load_caption_file",
    "image_caption_index",
]

KARPATHY_PREFIX = "captions:"
COCO_PREFIX = "coco_captions:"


def _read_json(path: str):
    return load_json(path, "caption file")


def _sentence_tokens(s: Dict) -> List[str]:
    if s.get("raw") is not None:
        return tokenize(str(s["raw"]))
    return tokenize(" ".join(str(t) for t in s.get("tokens", [])))


def load_karpathy_json(path: str, split: str, image_root: str = "") -> List[Dict]:
    """Records of ``split`` ("train" includes "restval"; "all" = every image) of a Karpathy JSON."""
    return _karpathy_records(_read_json(path), path, split, image_root)


def _karpathy_records(data, path: str, split: str, image_root: str) -> List[Dict]:
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{path}: a Karpathy-split JSON needs a top-level 'images' list")
    root = image_root or os.path.dirname(os.path.abspath(path))
    wanted = {"train": {"train", "restval"}}.get(split, {split})
    records = []
    for k, im in enumerate(data["images"]):
        if split != "all" and im.get("split") not in wanted:
            continue
        caps = [t for t in (_sentence_tokens(s) for s in im.get("sentences", [])) if t]
        if not caps:
            continue
        image_id = im.get("cocoid", im.get("image_id", im.get("imgid", k)))
        records.append({
            "file_name": os.path.join(root, im.get("filepath", "") or "", im["filename"]),
            "image_id": int(image_id),
            "captions": caps,
        })
    if not records:
        splits = sorted({str(im.get("split")) for im in data["images"]})
        raise ValueError(f"{path}: no images with captions in split '{split}' (splits present: {splits})")
    return records


def _coco_image_root(path: str) -> str:
    d = os.path.dirname(os.path.abspath(path))
    m = re.match(r"captions_(\w+)\.json$", os.path.basename(path))
    if m:
        for cand in (os.path.join(d, "..", m.group(1)), os.path.join(d, m.group(1))):
            if os.path.isdir(cand):
                return os.path.normpath(cand)
    return d


def load_coco_captions(path: str, image_root: str = "") -> List[Dict]:
    """Records of a COCO captions annotation file (images without captions are skipped)."""
    return _coco_records(_read_json(path), path, image_root)


def _coco_records(data, path: str, image_root: str) -> List[Dict]:
    if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
        raise ValueError(f"{path}: a COCO captions file needs 'images' and 'annotations'")
    root = image_root or _coco_image_root(path)
    caps: Dict[int, List[List[str]]] = {}
    for a in data["annotations"]:
        toks = tokenize(str(a.get("caption", "")))
        if toks:
            caps.setdefault(int(a["image_id"]), []).append(toks)
    records = []
    for im in sorted(data["images"], key=lambda x: int(x["id"])):
        c = caps.get(int(im["id"]))
        if c:
            records.append({"file_name": os.path.join(root, im["file_name"]), "image_id": int(im["id"]), "captions": c})
    if not records:
        raise ValueError(f"{path}: no captioned images")
    return records


def load_caption_file(path: str, image_root: str = "") -> List[Dict]:
    """Every captioned image of a Karpathy-split JSON or a COCO captions file (format detected)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"whole-image caption file not found: {path}")
    data = _read_json(path)
    if isinstance(data, dict) and "annotations" in data:
        return _coco_records(data, path, image_root)
    if isinstance(data, dict) and "images" in data:
        return _karpathy_records(data, path, "all", image_root)
    raise ValueError(f"{path}: neither a Karpathy-split JSON ('images' with 'sentences') nor a COCO captions file ('annotations')")


_INDEX_CACHE: Dict[str, Dict[int, List[List[str]]]] = {}


def image_caption_index(path: str) -> Dict[int, List[List[str]]]:
    """``{image id in the file: [[token, ...], ...]}`` of a caption file (cached per process)."""
    key = os.path.abspath(path)
    st = os.stat(key)
    key = f"{key}:{st.st_mtime_ns}:{st.st_size}"
    if key not in _INDEX_CACHE:
        index: Dict[int, List[List[str]]] = {}
        for r in load_caption_file(path):
            index.setdefault(int(r["image_id"]), []).extend(r["captions"])
        _INDEX_CACHE.clear()
        _INDEX_CACHE[key] = index
    return _INDEX_CACHE[key]


def is_caption_dataset(name: str) -> bool:
    return name.startswith(KARPATHY_PREFIX) or name.startswith(COCO_PREFIX)


def load_caption_records(name: str, image_root: str = "") -> List[Dict]:
    """Records of a dataset name (see the module docstring for the naming scheme)."""
    if name.startswith(KARPATHY_PREFIX):
        rest = name[len(KARPATHY_PREFIX):]
        if ":" not in rest:
            raise ValueError(f"dataset '{name}': expected 'captions:PATH.json:SPLIT'")
        path, split = rest.rsplit(":", 1)
        return load_karpathy_json(path, split, image_root)
    if name.startswith(COCO_PREFIX):
        return load_coco_captions(name[len(COCO_PREFIX):], image_root)
    raise ValueError(f"dataset '{name}' is not a caption dataset ('captions:PATH.json:SPLIT' or 'coco_captions:PATH.json')")


def build_caption_vocab(records: Sequence[Dict], min_count: int) -> Vocabulary:
    """Words seen at least ``min_count`` times in the records' captions (Vocabulary.build)."""
    counts: Counter = Counter()
    for r in records:
        for toks in r["captions"]:
            counts.update(toks)
    vocab = Vocabulary.build(counts, int(min_count))
    logger.info("caption vocabulary: %d words seen >= %d times (of %d distinct)", len(vocab.words), min_count, len(counts))
    return vocab


class CaptionDataset(Dataset):
    """Images with whole-image captions (the item contract is in the module docstring)."""

    def __init__(self, records: Sequence[Dict], vocab: Vocabulary, *, max_size: int = 720, max_tokens: int = 20, max_images: int = 0) -> None:
        self.records = list(records) if max_images <= 0 else list(records)[:max_images]
        self.vocab = vocab
        self.max_size = int(max_size)
        self.max_tokens = int(max_tokens)

    def __len__(self) -> int:
        return len(self.records)

    def gt_captions_str(self, i: int) -> List[str]:
        return [" ".join(t) for t in self.records[i]["captions"]]

    def encode_captions(self, captions: Sequence[Sequence[str]]) -> torch.Tensor:
        """(K, T) int64 word ids, 0-padded, truncated to ``max_tokens`` words."""
        return torch.from_numpy(self.vocab.encode_padded(captions, self.max_tokens))

    def __getitem__(self, i: int) -> Optional[Dict]:
        r = self.records[i]
        try:
            img = read_image(r["file_name"])
        except ImageReadError as e:
            logger.warning("skipping unreadable image: %s", e)
            return None
        h0, w0 = img.shape[:2]
        img, scale = resize_longest_side(img, self.max_size)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous(),
            "image_captions": self.encode_captions(r["captions"]),
            "gt_captions": self.gt_captions_str(i),
            "image_id": int(r["image_id"]),
            "file_name": r["file_name"],
            "height": int(h0),
            "width": int(w0),
            "scale": float(scale),
        }


def build_caption_dataset(cfg, name: str, vocab: Vocabulary, max_images: int = 0) -> CaptionDataset:
    return CaptionDataset(
        load_caption_records(name, cfg.DATASETS.CAPTIONS_IMAGE_ROOT),
        vocab,
        max_size=cfg.INPUT.MAX_SIZE,
        max_tokens=cfg.MODEL.IMAGE_CAPTION.MAX_TOKENS,
        max_images=max_images,
    )


def load_caption_train_vocab(cfg) -> Vocabulary:
    """Vocabulary of the standalone captioner: the DATASETS.TRAIN captions' words seen at least
    MODEL.IMAGE_CAPTION.VOCAB_MIN_COUNT times."""
    records: List[Dict] = []
    for name in cfg.DATASETS.TRAIN:
        records.extend(load_caption_records(name, cfg.DATASETS.CAPTIONS_IMAGE_ROOT))
    return build_caption_vocab(records, cfg.MODEL.IMAGE_CAPTION.VOCAB_MIN_COUNT)


def build_caption_train_loader(cfg, vocab: Vocabulary):
    """Endless shuffled batches (lists of item dicts) over DATASETS.TRAIN, as the trainer expects."""
    from densecap.utils import comm

    from .loader import InfiniteLoader

    datasets = [build_caption_dataset(cfg, n, vocab) for n in cfg.DATASETS.TRAIN]
    dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
    world = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world != 0:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes")
    return InfiniteLoader(dataset, batch_size=cfg.SOLVER.IMS_PER_BATCH // world, num_workers=cfg.DATALOADER.NUM_WORKERS, seed=cfg.SEED)
