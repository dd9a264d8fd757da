"""Reading ground truth and predictions for the evaluators (what ``tools/evaluate.py`` reads).

Dense captioning
    * GT: Visual Genome ``region_descriptions.json`` = ``[{"id" (or "image_id"), "regions":
      [{"x", "y", "width", "height", "phrase", ...}]}]``. Phrases go through the project's one
      tokeniser (:func:`densecap.data.tokenizer.tokenize`); with a vocabulary, captions longer
      than ``max_tokens`` are dropped and out-of-vocabulary words become ``<UNK>``, as the
      original's preprocessing did. Boxes stay as given (original pixels, not clipped).
      Images with no region left are counted and, unless ``keep_empty=True``, dropped from the
      evaluated set. An entry's ``"width"`` / ``"height"`` (if any) are kept; VG's
      ``image_data.json`` gives them otherwise (:func:`read_image_sizes`).
    * predictions: ``results.json`` = ``{"results": [{"image_id" | "img_name", "boxes":
      [[x, y, w, h], ...], "scores": [...], "captions": [...]}]}`` (a bare list is accepted).
      ``img_name`` (or a string ``image_id``) like ``"123.jpg"`` or ``"VG_100K/123.jpg"`` means
      image 123.

Whole-image captioning
    * GT: Karpathy-split JSON ``{"images": [{"filename", "split", "sentences": [{"raw", "tokens"}],
      "imgid", "cocoid", ...}]}``; COCO caption annotations (``{"images", "annotations":
      [{"image_id", "caption"}]}``) are accepted too.
    * predictions: COCO results ``[{"image_id", "caption"}]`` or a ``results.json`` whose entries
      carry ``"image_caption"``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np

from densecap.data.tokenizer import Vocabulary, tokenize

logger = logging.getLogger(__name__)


def load_json(path: str, what: str = "file") -> Any:
    """Read a JSON file (errors name the file, and the byte offset and line of a syntax error)."""
    from densecap.data.json_stream import load_json as _load

    return _load(path, what)


def image_key(value: Any) -> Hashable:
    """Normalise an image reference: ``123``, ``"123"``, ``"123.jpg"``, ``"dir/123.jpg"`` -> 123;
    any other name -> its file stem (string)."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"not an image id: {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    s = str(value).strip()
    stem = os.path.splitext(os.path.basename(s.replace("\\", "/")))[0]
    return int(stem) if stem.isdigit() else stem


# ------------------------------------------------------------------------------------------
# dense captioning
# ------------------------------------------------------------------------------------------
def read_split_ids(split_file: str, split: str) -> List[int]:
    """Image ids of ``split`` in a ``densecap_splits.json``-style file."""
    d = load_json(split_file, "split file")
    if not isinstance(d, dict) or split not in d:
        keys = list(d) if isinstance(d, dict) else type(d).__name__
        raise KeyError(f"{split_file}: no split '{split}' (has {keys})")
    return [int(x) for x in d[split]]


def parse_vg_regions(
    entries: Sequence[Dict],
    *,
    image_ids: Optional[Sequence[int]] = None,
    vocab: Optional[Vocabulary] = None,
    max_tokens: int = 15,
    max_images: int = 0,
    keep_empty: bool = False,
    file_order: bool = False,
) -> Tuple[Dict[int, Dict[str, Any]], Dict[str, int]]:
    """Region descriptions -> (``{image_id: {"boxes" xywh, "captions"}}``, report counts).

    The evaluated images are ``image_ids`` in that order (default: the file's order), cut to the
    first ``max_images`` (0 = all); with ``file_order`` the chosen images are then put in the
    order of ``entries``, the order the original's DataLoader visited a split in (it only
    matters for tied scores). Images with no region (left) are counted in ``gt_images_empty``
    and kept (with no boxes) only if ``keep_empty``."""
    by_id: Dict[int, Dict] = {}
    file_pos: Dict[int, int] = {}
    for e in entries:
        iid = e.get("id", e.get("image_id"))
        if iid is None:
            raise ValueError("region descriptions entry without 'id' / 'image_id'")
        by_id[int(iid)] = e
        file_pos.setdefault(int(iid), len(file_pos))
    order = [int(i) for i in image_ids] if image_ids is not None else list(by_id)
    missing = [i for i in order if i not in by_id]
    if missing:
        logger.warning("%d images of the split are not in the GT file, e.g. %s", len(missing), missing[:5])
    order = [i for i in order if i in by_id]
    report = {
        "split_images_missing_from_gt": len(missing),
        "gt_regions_too_long": 0,
        "gt_images_empty": 0,
    }
    gt: Dict[int, Dict[str, Any]] = {}
    for iid in order:
        if max_images and len(gt) >= max_images:
            break
        boxes, caps = [], []
        for r in by_id[iid].get("regions") or []:
            toks = tokenize(str(r.get("phrase", "")))
            if vocab is not None:
                if max_tokens and len(toks) > max_tokens:
                    report["gt_regions_too_long"] += 1
                    continue
                toks = vocab.map_unknown(toks)
            try:
                box = [float(r["x"]), float(r["y"]), float(r["width"]), float(r["height"])]
            except (KeyError, TypeError, ValueError):
                box = [float("nan")] * 4  # dropped (and counted) by the evaluator
            boxes.append(box)
            caps.append(" ".join(toks))
        if not boxes:
            report["gt_images_empty"] += 1
            if not keep_empty:
                continue
        gt[iid] = {"boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4), "captions": caps}
        for k in ("width", "height"):
            if by_id[iid].get(k) is not None:
                gt[iid][k] = by_id[iid][k]
    if file_order:
        gt = {k: gt[k] for k in sorted(gt, key=file_pos.__getitem__)}
    if report["gt_images_empty"]:
        logger.warning(
            "%d GT images have no regions left%s", report["gt_images_empty"],
            "" if keep_empty else " and are not evaluated",
        )
    return gt, report


def read_image_sizes(path: str) -> Dict[int, Tuple[float, float]]:
    """VG ``image_data.json`` (``[{"image_id" | "id", "width", "height", ...}]``) ->
    ``{image_id: (width, height)}``."""
    entries = load_json(path, "image data")
    if isinstance(entries, dict):
        entries = entries.get("images", entries.get("data"))
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of {{'image_id', 'width', 'height'}} (VG image_data.json)")
    sizes: Dict[int, Tuple[float, float]] = {}
    for n, e in enumerate(entries):
        iid = e.get("image_id", e.get("id")) if isinstance(e, dict) else None
        try:
            sizes[int(iid)] = (float(e["width"]), float(e["height"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: entry {n} needs 'image_id' (or 'id'), 'width' and 'height'") from None
    return sizes


def read_vg_gt(
    path: str,
    *,
    split_file: Optional[str] = None,
    split: Optional[str] = None,
    vocab: Optional[Vocabulary] = None,
    max_tokens: int = 15,
    max_images: int = 0,
    keep_empty: bool = False,
    file_order: bool = False,
) -> Tuple[Dict[int, Dict[str, Any]], Dict[str, int]]:
    """Read a VG ``region_descriptions.json`` (see :func:`parse_vg_regions`)."""
    entries = load_json(path, "ground truth")
    if isinstance(entries, dict):  # tolerate {"images"/"regions": [...]} wrappers
        for k in ("images", "regions", "data"):
            if isinstance(entries.get(k), list):
                entries = entries[k]
                break
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of {{'id', 'regions'}} (VG region_descriptions.json)")
    ids = None
    if split_file:
        ids = read_split_ids(split_file, split or "test")
    elif split:
        raise ValueError("--split needs --split-file (densecap_splits.json)")
    return parse_vg_regions(
        entries, image_ids=ids, vocab=vocab, max_tokens=max_tokens, max_images=max_images, keep_empty=keep_empty,
        file_order=file_order,
    )


def read_dense_predictions(path: str) -> Dict[Hashable, Dict[str, Any]]:
    """Read ``results.json`` -> ``{image_id: {"boxes", "scores", "captions"}}`` (validated later)."""
    d = load_json(path, "predictions")
    entries = d.get("results") if isinstance(d, dict) else d
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected {{'results': [...]}} or a list of per-image entries")
    out: Dict[Hashable, Dict[str, Any]] = {}
    for n, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ValueError(f"{path}: entry {n} is not an object")
        ref = e.get("image_id", e.get("img_name", e.get("file_name")))
        if ref is None:
            raise ValueError(f"{path}: entry {n} has neither 'image_id' nor 'img_name'")
        key = image_key(ref)
        if key in out:
            raise ValueError(f"{path}: image {key!r} appears more than once")
        for f in ("boxes", "scores", "captions"):
            if f not in e:
                raise ValueError(f"{path}: entry for image {key!r} has no '{f}'")
        out[key] = {"boxes": e["boxes"], "scores": e["scores"], "captions": e["captions"]}
    return out


def frame_warning(gt_by_image: Dict, pred_by_image: Dict) -> Optional[str]:
    """A warning when predictions look like they are in the 720-pixel frame of the original's
    ``run_model.lua`` while the GT is in original pixels (the usual cause of near-zero mAP)."""
    n_big = n_small = 0
    for k, g in gt_by_image.items():
        p = pred_by_image.get(k)
        gb = np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)
        try:
            pb = np.asarray(p["boxes"], dtype=np.float64).reshape(-1, 4) if p is not None else None
        except (TypeError, ValueError):
            continue
        if pb is None:
            continue
        g_far = np.maximum(gb[:, 0] + gb[:, 2], gb[:, 1] + gb[:, 3])
        p_far = np.maximum(pb[:, 0] + pb[:, 2], pb[:, 1] + pb[:, 3])
        g_far, p_far = g_far[np.isfinite(g_far)], p_far[np.isfinite(p_far)]
        if len(g_far) == 0 or len(p_far) == 0:
            continue
        g_ext, p_ext = g_far.max(), p_far.max()
        if g_ext > 800:
            n_big += 1
            n_small += int(p_ext <= 721)
    if n_big >= 5 and n_small >= 0.9 * n_big:
        return (
            f"in {n_small} of {n_big} images whose GT extends beyond 800 px no predicted box goes beyond "
            f"720 px: predictions may be in the 720-scaled frame of the original run_model.lua; boxes "
            f"must be [x, y, w, h] in original-image pixels"
        )
    return None


# ------------------------------------------------------------------------------------------
# whole-image captioning
# ------------------------------------------------------------------------------------------
ID_FIELDS = ("image_id", "cocoid", "imgid")


class CaptionGT:
    """References of the evaluated images and the indexes used to match predictions."""

    def __init__(self) -> None:
        self.refs: List[List[str]] = []  # per GT image: raw reference sentences
        self.names: List[str] = []
        self.by_id: Dict[str, Dict[int, int]] = {f: {} for f in ID_FIELDS}
        self.by_name: Dict[str, int] = {}
        self.by_stem: Dict[str, int] = {}

    def add(self, ids: Dict[str, Any], name: Optional[str], refs: List[str]) -> None:
        i = len(self.refs)
        self.refs.append(refs)
        self.names.append(name or "")
        for f, v in ids.items():
            try:
                self.by_id[f].setdefault(int(v), i)
            except (TypeError, ValueError):
                pass
        if name:
            base = os.path.basename(name)
            self.by_name.setdefault(base, i)
            self.by_stem.setdefault(os.path.splitext(base)[0], i)

    def __len__(self) -> int:
        return len(self.refs)

    def match(self, image_id: Any = None, name: Optional[str] = None) -> Optional[int]:
        """GT index of a prediction: by ``image_id`` against image_id, cocoid, imgid (in that
        order), else by file name (then file stem)."""
        if image_id is not None and not isinstance(image_id, bool):
            try:
                v = int(image_id)
            except (TypeError, ValueError):
                v = None
                if name is None:
                    name = str(image_id)
            if v is not None:
                for f in ID_FIELDS:
                    if v in self.by_id[f]:
                        return self.by_id[f][v]
        if name:
            base = os.path.basename(str(name).replace("\\", "/"))
            if base in self.by_name:
                return self.by_name[base]
            stem = os.path.splitext(base)[0]
            if stem in self.by_stem:
                return self.by_stem[stem]
        return None


def read_caption_gt(path: str, split: Optional[str] = None) -> CaptionGT:
    """Karpathy-split JSON (or COCO caption annotations) -> :class:`CaptionGT` of ``split``."""
    d = load_json(path, "caption ground truth")
    gt = CaptionGT()
    if isinstance(d, dict) and isinstance(d.get("annotations"), list):  # COCO captions format
        images = {im["id"]: im for im in d.get("images", []) if "id" in im}
        refs: Dict[int, List[str]] = {}
        for a in d["annotations"]:
            refs.setdefault(int(a["image_id"]), []).append(str(a.get("caption", "")))
        for iid, caps in refs.items():
            im = images.get(iid, {})
            gt.add({"image_id": iid}, im.get("file_name"), caps)
        return gt
    images = d.get("images") if isinstance(d, dict) else d
    if not isinstance(images, list):
        raise ValueError(f"{path}: expected Karpathy-split JSON {{'images': [...]}}")
    for im in images:
        if split and im.get("split") != split:
            continue
        sents = im.get("sentences")
        if sents is None:
            sents = im.get("captions", [])
        caps = []
        for s in sents:
            if isinstance(s, dict):
                caps.append(s["raw"] if "raw" in s else " ".join(s.get("tokens", [])))
            else:
                caps.append(str(s))
        ids = {f: im[f] for f in ID_FIELDS if f in im}
        if not ids and "id" in im:
            ids = {"image_id": im["id"]}
        name = im.get("filename", im.get("file_name"))
        gt.add(ids, name, caps)
    if len(gt) == 0:
        raise ValueError(f"{path}: no images" + (f" in split '{split}'" if split else ""))
    return gt


def read_caption_predictions(path: str) -> List[Tuple[Any, Optional[str], str]]:
    """COCO results list or ``results.json`` -> ``[(image_id or None, file name or None, caption)]``."""
    d = load_json(path, "caption predictions")
    entries = d.get("results") if isinstance(d, dict) else d
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a COCO results list or {{'results': [...]}}")
    out = []
    for n, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ValueError(f"{path}: entry {n} is not an object")
        cap = e.get("caption", e.get("image_caption"))
        if cap is None:
            raise ValueError(f"{path}: entry {n} has no 'caption' / 'image_caption'")
        if isinstance(cap, list):  # top-N list: best first
            cap = cap[0] if cap else ""
        name = e.get("img_name", e.get("file_name", e.get("filename")))
        out.append((e.get("image_id"), name, str(cap)))
    return out


def tokenized(text: str) -> str:
    """The one tokeniser, joined by single spaces (what every metric sees)."""
    return " ".join(tokenize(text))
