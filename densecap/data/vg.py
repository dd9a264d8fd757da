"""Visual Genome preparation: region descriptions -> the prepared form (densecap/data/prepared.py).

Inputs (Visual Genome v1.0 or v1.2, both field spellings accepted):

* ``region_descriptions.json``: ``[{"id" | "image_id": image_id, "regions": [{"region_id" | "id",
  "image_id" | "image", "x", "y", "width", "height", "phrase"}, ...]}, ...]``. It is *streamed*
  (one image element at a time, :mod:`densecap.data.json_stream`): the ~5.4M regions of VG v1.2 are
  never a list of Python dicts; kept regions live in compact arrays (token ids as int32).
* ``image_data.json``: ``[{"image_id" (v1.2) | "id" (v1.0), "width", "height", ...}]``.
* ``densecap_splits.json``: ``{"train": [ids], "val": [ids], "test": [ids]}``.
* image folders (``VG_100K/``, ``VG_100K_2/``), searched for ``<image_id>.jpg`` without merging:
  each folder is listed once with ``os.scandir``; the first folder holding an id wins.

Filtering, in this order; a region is counted once, under the first reason that applies:

====================  ==========================================================================
``zero_area``         region with width <= 0 or height <= 0
``outside_image``     region with nothing left after clipping to the image
``empty_caption``     region whose phrase has no token
``too_long``          region with more than ``max_tokens`` tokens
``missing_image``     image (of a split) whose file is in none of the folders; its regions are
                      not counted as regions
``no_regions``        image left with no region
====================  ==========================================================================

Extra counts in the report: ``invalid_box`` (regions whose coordinates are missing or not numbers,
checked first), ``not_in_split`` (images of the file in no split, ignored),
``not_in_region_descriptions`` (split images the file never mentions), ``missing_size`` (images
without a size in ``image_data.json`` and no readable file header), ``duplicate_image`` (a second
element for the same image, ignored), ``duplicate_regions`` (exact repeats of box and phrase
within an image: *kept*, evaluation merges them), plus ``images_kept`` / ``regions_kept`` per split.

Boxes are clipped to the image and stay ``[x, y, w, h]`` floats in original-image pixels.
Tokens come from :func:`densecap.data.tokenizer.tokenize`; the vocabulary is built from the kept
train regions only (:meth:`Vocabulary.build`, ``min_token_count``), rarer words become ``<UNK>``.
Outputs are written only after the whole input parsed, each file atomically.
"""
from __future__ import annotations

import json
import logging
import os
import time
from array import array
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from densecap.utils.io import atomic_write_json

from .json_stream import JSONStreamError, iter_json_list, load_json
from .prepared import SPLITS, write_split
from .tokenizer import UNK, Vocabulary, tokenize

logger = logging.getLogger(__name__)

__all__ = ["prepare_vg", "prepare_regions", "index_image_dirs", "image_dirs_under", "JSONStreamError", "DROP_REASONS"]

REGION_REASONS = ("zero_area", "outside_image", "empty_caption", "too_long")
IMAGE_REASONS = ("missing_image", "no_regions")
DROP_REASONS = REGION_REASONS + IMAGE_REASONS
IMAGE_FILE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _image_id(d: Dict, *keys: str):
    for k in keys:
        v = d.get(k)
        if v is not None:
            return int(v)
    return None


def index_image_dirs(image_dirs: Sequence[str]) -> Dict[int, str]:
    """``{image_id: path}`` for every ``<image_id>.jpg`` (or .jpeg/.png) in the folders.

    Each folder is listed once; when two folders hold the same id the first folder wins.
    """
    index: Dict[int, str] = {}
    for d in image_dirs:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"image folder not found: {d}")
        found: Dict[int, str] = {}
        with os.scandir(d) as it:
            for entry in it:
                name = entry.name
                stem, ext = os.path.splitext(name)
                if ext.lower() in IMAGE_FILE_EXTENSIONS and stem.isdigit():
                    iid = int(stem)
                    # prefer .jpg when an id has several files in one folder
                    if iid not in found or ext.lower() == ".jpg":
                        found[iid] = entry.path
        for iid, p in found.items():
            index.setdefault(iid, p)
        logger.info("%s: %d images", d, len(found))
    return index


def image_dirs_under(image_root: str) -> List[str]:
    """``image_root`` and its Visual Genome image folders (``VG_100K*``), in search order."""
    return [image_root] + sorted(
        os.path.join(image_root, d) for d in os.listdir(image_root)
        if d.startswith("VG_100K") and os.path.isdir(os.path.join(image_root, d)))


def _read_splits(path: str) -> Dict[int, int]:
    data = load_json(path)
    if not isinstance(data, dict) or not any(s in data for s in SPLITS):
        raise ValueError(f"{path}: expected {{'train': [ids], 'val': [ids], 'test': [ids]}}")
    split_of: Dict[int, int] = {}
    for si, s in enumerate(SPLITS):
        for iid in data.get(s, []):
            iid = int(iid)
            if iid in split_of and split_of[iid] != si:
                logger.warning("%s: image %d is in both %s and %s; keeping %s",
                               path, iid, SPLITS[split_of[iid]], s, SPLITS[split_of[iid]])
                continue
            split_of[iid] = si
    return split_of


def _read_sizes(path: str, wanted: Dict[int, int]) -> Tuple[Dict[int, tuple], Dict[int, int]]:
    """``({image_id: (width, height)}, {image_id: coco_id})`` of the wanted images."""
    sizes: Dict[int, tuple] = {}
    coco: Dict[int, int] = {}
    for i, d in enumerate(iter_json_list(path)):
        if not isinstance(d, dict):
            raise ValueError(f"{path}: element {i} is not an object")
        iid = _image_id(d, "image_id", "id")
        if iid is None or iid not in wanted:
            continue
        sizes[iid] = (int(d["width"]), int(d["height"]))
        cid = d.get("coco_id")
        if cid is not None:
            coco[iid] = int(cid)
    return sizes, coco


def _header_size(path: str) -> Optional[tuple]:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size  # (w, h), EXIF orientation not applied, as VG's image_data
    except Exception:  # noqa: BLE001 - any unreadable header means "no size"
        return None


class _WordIds(dict):
    """word -> raw id, growing: ``ids[word]`` assigns the next id to a new word."""

    def __init__(self) -> None:
        super().__init__()
        self.words: List[str] = []

    def __missing__(self, word: str) -> int:
        i = len(self.words)
        self.words.append(word)
        self[word] = i
        return i


def prepare_vg(
    *,
    region_descriptions: str,
    image_data: str,
    splits: str,
    image_dirs: Sequence[str],
    output: str,
    max_tokens: int = 15,
    min_token_count: int = 15,
    assume_images_exist: bool = False,
    image_exists: Optional[Callable[[int], Optional[str]]] = None,
    verbose: bool = True,
) -> Dict:
    """Prepare Visual Genome files into ``output`` (see the module docstring). Returns the report.

    ``image_exists(image_id) -> path or None`` replaces the folder search (tests, benchmarks);
    ``assume_images_exist=True`` takes ``image_dirs[0]/<id>.jpg`` without looking.
    """
    t0 = time.perf_counter()
    image_dirs = list(image_dirs)
    split_of = _read_splits(splits)
    sizes, coco_of = _read_sizes(image_data, split_of)
    if image_exists is not None:
        find_image = image_exists
    elif assume_images_exist:
        if not image_dirs:
            raise ValueError("assume_images_exist needs at least one image folder")
        d0 = image_dirs[0]
        find_image = lambda iid: os.path.join(d0, f"{iid}.jpg")  # noqa: E731
    else:
        find_image = index_image_dirs(image_dirs).get
    logger.info("splits: %d images, sizes for %d, read in %.1f s",
                len(split_of), len(sizes), time.perf_counter() - t0)
    return prepare_regions(
        iter_json_list(region_descriptions),
        source=region_descriptions,
        split_of=split_of,
        sizes=sizes,
        coco_of=coco_of,
        find_image=find_image,
        read_header_sizes=not (assume_images_exist or image_exists is not None),
        output=output,
        max_tokens=max_tokens,
        min_token_count=min_token_count,
        verbose=verbose,
        t0=t0,
    )


def prepare_regions(
    elements: Iterable[Dict],
    *,
    source: str,
    split_of: Dict[int, int],
    sizes: Dict[int, tuple],
    coco_of: Dict[int, int],
    find_image: Callable[[int], Optional[str]],
    read_header_sizes: bool,
    output: str,
    max_tokens: int = 15,
    min_token_count: int = 15,
    extra_counts: Optional[Dict[str, int]] = None,
    verbose: bool = True,
    t0: Optional[float] = None,
) -> Dict:
    """The preparation itself (filters, vocabulary, outputs; the module docstring), on image
    elements in the ``region_descriptions.json`` layout from any source.

    ``split_of``: ``{image_id: split index into SPLITS}``; ``sizes``: ``{image_id: (w, h)}``;
    ``find_image(image_id) -> path or None``; ``read_header_sizes``: read the size of an image
    ``sizes`` lacks from its file header. ``extra_counts`` are added to the report as they are.
    ``source`` names the input in messages.
    """
    t0 = time.perf_counter() if t0 is None else t0
    counts = {k: 0 for k in DROP_REASONS}
    extra = {k: 0 for k in ("invalid_box", "not_in_split", "not_in_region_descriptions",
                            "missing_size", "duplicate_image", "duplicate_regions")}
    # kept images
    img_ids: List[int] = []
    img_paths: List[str] = []
    img_coco = array("q")  # COCO id of the image, -1 when it has none
    img_h = array("i")
    img_w = array("i")
    img_split = array("b")
    img_count = array("i")
    # kept regions (compact)
    reg_ids = array("q")
    reg_boxes = array("f")
    reg_len = array("h")
    tok_ids = array("i")
    word_ids = _WordIds()
    word_get = word_ids.__getitem__
    seen = set()
    regions_total = 0

    reasons_zero, reasons_out, reasons_empty, reasons_long = 0, 0, 0, 0
    for el in elements:
        if not isinstance(el, dict):
            raise ValueError(f"{source}: list element is not an object: {str(el)[:80]}")
        regions = el.get("regions") or []
        iid = _image_id(el, "image_id", "id")
        if iid is None and regions:
            iid = _image_id(regions[0], "image_id", "image")
        if iid is None:
            raise ValueError(f"{source}: an element has no image id: {str(el)[:120]}")
        si = split_of.get(iid)
        if si is None:
            extra["not_in_split"] += 1
            continue
        if iid in seen:
            extra["duplicate_image"] += 1
            continue
        seen.add(iid)
        path = find_image(iid)
        if path is None:
            counts["missing_image"] += 1
            continue
        wh = sizes.get(iid)
        if wh is None:
            wh = _header_size(path) if read_header_sizes else None
            if wh is None:
                extra["missing_size"] += 1
                continue
        W, H = wh
        regions_total += len(regions)
        kept = 0
        keys = set()
        for r in regions:
            try:
                x = float(r["x"])
                y = float(r["y"])
                w = float(r["width"] if "width" in r else r["w"])
                h = float(r["height"] if "height" in r else r["h"])
            except (KeyError, TypeError, ValueError):
                extra["invalid_box"] += 1
                continue
            if not (w > 0 and h > 0):  # also catches NaN
                reasons_zero += 1
                continue
            x1 = x if x > 0 else 0.0
            y1 = y if y > 0 else 0.0
            x2 = x + w
            y2 = y + h
            if x2 > W:
                x2 = W
            if y2 > H:
                y2 = H
            if x2 <= x1 or y2 <= y1:
                reasons_out += 1
                continue
            phrase = r.get("phrase")
            toks = tokenize(phrase) if isinstance(phrase, str) else []
            n = len(toks)
            if n == 0:
                reasons_empty += 1
                continue
            if n > max_tokens:
                reasons_long += 1
                continue
            key = (x, y, w, h, phrase)
            if key in keys:
                extra["duplicate_regions"] += 1
            else:
                keys.add(key)
            rid = r.get("region_id")
            if rid is None:
                rid = r.get("id", -1)
            reg_ids.append(int(rid))
            reg_boxes.extend((x1, y1, x2 - x1, y2 - y1))
            reg_len.append(n)
            tok_ids.extend(map(word_get, toks))
            kept += 1
        if kept == 0:
            counts["no_regions"] += 1
            continue
        img_ids.append(iid)
        img_coco.append(coco_of.get(iid, -1))
        img_paths.append(path)
        img_h.append(H)
        img_w.append(W)
        img_split.append(si)
        img_count.append(kept)
    counts["zero_area"] = reasons_zero
    counts["outside_image"] = reasons_out
    counts["empty_caption"] = reasons_empty
    counts["too_long"] = reasons_long
    extra["not_in_region_descriptions"] = sum(1 for i in split_of if i not in seen)
    del seen
    t_parse = time.perf_counter() - t0
    logger.info("parsed %s in %.1f s: %d images, %d regions kept",
                source, t_parse, len(img_ids), len(reg_len))

    # ---- vocabulary from the train split, token ids remapped with one lookup table ------------
    tok = np.frombuffer(tok_ids, dtype=np.int32) if len(tok_ids) else np.zeros(0, np.int32)
    lens = np.frombuffer(reg_len, dtype=np.int16).astype(np.int64) if len(reg_len) else np.zeros(0, np.int64)
    isplit = np.frombuffer(img_split, dtype=np.int8) if len(img_split) else np.zeros(0, np.int8)
    icount = np.frombuffer(img_count, dtype=np.int32) if len(img_count) else np.zeros(0, np.int32)
    rsplit = np.repeat(isplit, icount)  # R
    tsplit = np.repeat(rsplit, lens)  # total tokens
    train_counts = np.bincount(tok[tsplit == 0], minlength=len(word_ids.words))
    del tsplit
    vocab = Vocabulary.build(
        {w: int(c) for w, c in zip(word_ids.words, train_counts) if c > 0}, min_token_count
    )
    lut = np.full(max(len(word_ids.words), 1), UNK, dtype=np.int32)
    for w, i in word_ids.items():
        lut[i] = vocab.token_to_idx.get(w, UNK)
    mapped = lut[tok]  # total tokens
    del tok
    R = int(lens.shape[0])
    T = int(max_tokens)
    tok_start = np.zeros(R, dtype=np.int64)
    if R:
        np.cumsum(lens[:-1], out=tok_start[1:])
    flat = np.repeat(np.arange(R, dtype=np.int64) * T - tok_start, lens)
    flat += np.arange(flat.shape[0], dtype=np.int64)
    del tok_start
    captions = np.zeros((R, T), dtype=np.int32)
    captions.reshape(-1)[flat] = mapped
    del flat, mapped
    boxes = np.frombuffer(reg_boxes, dtype=np.float32).reshape(-1, 4) if len(reg_boxes) else np.zeros((0, 4), np.float32)
    rids = np.frombuffer(reg_ids, dtype=np.int64) if len(reg_ids) else np.zeros(0, np.int64)

    report: Dict = dict(counts)
    report["images_kept"] = {}
    report["regions_kept"] = {}
    ids_np = np.asarray(img_ids, dtype=np.int64)
    paths_np = np.asarray(img_paths, dtype=object)
    coco_np = np.frombuffer(img_coco, dtype=np.int64) if len(img_coco) else np.zeros(0, np.int64)
    h_np = np.frombuffer(img_h, dtype=np.int32) if len(img_h) else np.zeros(0, np.int32)
    w_np = np.frombuffer(img_w, dtype=np.int32) if len(img_w) else np.zeros(0, np.int32)
    writes = []
    for si, s in enumerate(SPLITS):
        imask = isplit == si
        rmask = rsplit == si
        report["images_kept"][s] = int(imask.sum())
        report["regions_kept"][s] = int(rmask.sum())
        writes.append((s, imask, rmask))
    report.update(extra)
    report.update(extra_counts or {})
    report["images_total"] = len(split_of)
    report["regions_total"] = regions_total
    report["vocab_size"] = len(vocab)
    report["max_tokens"] = T
    report["min_token_count"] = int(min_token_count)
    n_train_tok = int(train_counts.sum())
    unk_train = n_train_tok - sum(int(train_counts[word_ids[w]]) for w in vocab.words)
    report["train_unk_token_fraction"] = round(unk_train / max(n_train_tok, 1), 6)

    # ---- write (atomically, everything parsed fine) ---------------------------------------------
    os.makedirs(output, exist_ok=True)
    for s, imask, rmask in writes:
        write_split(
            output,
            s,
            image_ids=ids_np[imask],
            coco_ids=coco_np[imask],
            image_paths=list(paths_np[imask]),
            heights=h_np[imask],
            widths=w_np[imask],
            region_counts=icount[imask],
            region_ids=rids[rmask],
            boxes=boxes[rmask],
            captions=captions[rmask],
            caption_lengths=lens[rmask].astype(np.int16),
        )
    vocab.save(os.path.join(output, "vocab.json"))
    atomic_write_json(os.path.join(output, "report.json"), report, indent=2)
    logger.info("prepared %s in %.1f s", output, time.perf_counter() - t0)
    if verbose:
        print(json.dumps(report, indent=2))
        print(f"wrote {output} in {time.perf_counter() - t0:.1f} s")
    return report


# ---------------------------------------------------------------------------------------------
# command line (datasets/prepare_vg.py is a thin wrapper; ``python -m densecap.data.vg`` also works)
# ---------------------------------------------------------------------------------------------
def build_arg_parser(vg_root: str = os.path.join("datasets", "vg")):
    """Arguments of the preparation CLI; file defaults point into ``vg_root``."""
    import argparse

    p = argparse.ArgumentParser(
        description="Prepare Visual Genome region descriptions for training "
        "(see densecap/data/vg.py and datasets/README.md).",
    )
    j = os.path.join
    p.add_argument("--region-descriptions", default=j(vg_root, "region_descriptions.json"))
    p.add_argument("--image-data", default=j(vg_root, "image_data.json"))
    p.add_argument("--splits", default=j(vg_root, "densecap_splits.json"))
    p.add_argument("--image-dirs", nargs="+", default=[j(vg_root, "VG_100K"), j(vg_root, "VG_100K_2")],
                   help="folders holding <image_id>.jpg, searched in order (not merged)")
    p.add_argument("--output", default=j(vg_root, "prepared"))
    p.add_argument("--max-tokens", type=int, default=15, help="drop longer captions")
    p.add_argument("--min-token-count", type=int, default=15,
                   help="train-split words seen fewer times become <UNK>")
    p.add_argument("--assume-images-exist", action="store_true",
                   help="do not look for the image files (take IMAGE_DIRS[0]/<id>.jpg); for benchmarks")
    return p


def main(argv: Optional[Sequence[str]] = None, vg_root: str = os.path.join("datasets", "vg")) -> int:
    import sys

    p = build_arg_parser(vg_root)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for f in (args.region_descriptions, args.image_data, args.splits):
        if not os.path.isfile(f):
            print(f"error: file not found: {f} (see datasets/README.md)", file=sys.stderr)
            return 2
    try:
        prepare_vg(
            region_descriptions=args.region_descriptions,
            image_data=args.image_data,
            splits=args.splits,
            image_dirs=args.image_dirs,
            output=args.output,
            max_tokens=args.max_tokens,
            min_token_count=args.min_token_count,
            assume_images_exist=args.assume_images_exist,
        )
    except (JSONStreamError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
