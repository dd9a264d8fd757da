"""Your own region-caption data: the documented layouts, their JSON Schemas, and lazy preparation.

Two layouts are read (``docs/DATASETS.md``; schemas in ``densecap/data/schemas/``):

* **Visual Genome** ``region_descriptions.json`` (a JSON list): images are ``<image_id>.jpg``
  under the image root (or its ``VG_100K*/`` folders); ``image_data.json`` (sizes) and
  ``densecap_splits.json`` beside the file are used when present.
* **COCO-style region captions** (a JSON object)::

      {"images":      [{"id": int, "file_name": str, "width": int, "height": int,
                        "split": "train" | "val" | "test" (optional)}],
       "annotations": [{"id": int (optional), "image_id": int, "bbox": [x, y, w, h], "caption": str}],
       "image_captions": [{"image_id": int, "caption": str}]  (optional, whole-image captions)}

  ``file_name`` is relative to the image root; boxes are in original-image pixels.

The split of an image is, in this order: its ``split`` field (COCO-style), the split file
(``densecap_splits.json`` beside the annotation file, or ``split_file=``), else a fixed
80 / 10 / 10 split by image id (a hash of the id, the same on every machine and run).

Preparation is Visual Genome's (:func:`densecap.data.vg.prepare_regions`): the same tokeniser,
filters, vocabulary rules and drop report. It runs once, on first use of a dataset name, into
``<cache_root>/<file stem>-<key>/prepared`` where the key hashes the annotation file's path, size
and modification time, the image root (and its modification time), the split file and the
preparation options: editing the file or adding images prepares it again, nothing else does.
Whole-image captions go to ``captions.json`` beside the prepared directory, where the joint
image-caption head (``MODEL.IMAGE_CAPTION.ENABLED``) finds them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Dict, List, Optional, Tuple

from .json_stream import iter_json_list, load_json
from .prepared import SPLITS

logger = logging.getLogger(__name__)

__all__ = [
    "REGIONS_PREFIX", "SCHEMAS", "load_schema", "schema_errors", "detect_layout", "split_by_hash",
    "prepare_region_captions", "prepared_region_captions", "register_region_captions",
    "parse_regions_name",
]

REGIONS_PREFIX = "regions:"
SPLIT_FILE_NAME = "densecap_splits.json"
IMAGE_DATA_NAME = "image_data.json"
_SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
SCHEMAS = {
    "region_captions": "region_captions.schema.json",
    "region_descriptions": "region_descriptions.schema.json",
    "image_data": "image_data.schema.json",
    "splits": "splits.schema.json",
}
# bump when the preparation of these datasets changes what it writes
_CACHE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# schemas
# ---------------------------------------------------------------------------------------------
def load_schema(name: str) -> dict:
    """One of the shipped JSON Schemas by name (``SCHEMAS``)."""
    if name not in SCHEMAS:
        raise KeyError(f"unknown schema '{name}'; known: {sorted(SCHEMAS)}")
    with open(os.path.join(_SCHEMA_DIR, SCHEMAS[name]), encoding="utf-8") as f:
        return json.load(f)


_VALIDATORS: Dict[Tuple[str, bool], object] = {}


def _validator(name: str, items: bool):
    """A jsonschema validator for schema ``name`` (``items``: for one element of a list schema)."""
    key = (name, items)
    if key not in _VALIDATORS:
        from jsonschema import Draft202012Validator

        schema = load_schema(name)
        if items:
            schema = dict(schema["items"], **{"$schema": schema["$schema"]})
        _VALIDATORS[key] = Draft202012Validator(schema)
    return _VALIDATORS[key]


def _format_error(e, prefix: str = "") -> str:
    where = prefix + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in e.absolute_path)
    return f"{where or '(top level)'}: {e.message}"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _opt_int(d: dict, keys) -> bool:
    return all(_is_int(d[k]) for k in keys if k in d)


def _region_ok(r) -> bool:
    return (isinstance(r, dict) and all(_is_num(r.get(k)) for k in ("x", "y", "width", "height"))
            and isinstance(r.get("phrase"), str) and _opt_int(r, ("region_id", "id", "image_id", "image")))


def _vg_element_ok(el) -> bool:
    return (isinstance(el, dict) and ("id" in el or "image_id" in el) and _opt_int(el, ("id", "image_id"))
            and isinstance(el.get("regions"), list) and all(_region_ok(r) for r in el["regions"]))


def _image_data_ok(d) -> bool:
    return (isinstance(d, dict) and ("id" in d or "image_id" in d) and _opt_int(d, ("id", "image_id"))
            and _is_int(d.get("width")) and d["width"] >= 1 and _is_int(d.get("height")) and d["height"] >= 1
            and (d.get("coco_id") is None or _is_int(d["coco_id"])))


def _coco_style_ok(doc) -> bool:
    if not (isinstance(doc, dict) and isinstance(doc.get("images"), list) and isinstance(doc.get("annotations"), list)):
        return False
    if "info" in doc and not isinstance(doc["info"], dict):
        return False
    for im in doc["images"]:
        if not (isinstance(im, dict) and _is_int(im.get("id")) and isinstance(im.get("file_name"), str)
                and im["file_name"] and _is_int(im.get("width")) and im["width"] >= 1
                and _is_int(im.get("height")) and im["height"] >= 1
                and im.get("split", "train") in SPLITS):
            return False
    for a in doc["annotations"]:
        b = a.get("bbox") if isinstance(a, dict) else None
        if not (isinstance(b, list) and len(b) == 4 and all(_is_num(v) for v in b) and _is_int(a.get("image_id"))
                and isinstance(a.get("caption"), str) and _opt_int(a, ("id",))):
            return False
    caps = doc.get("image_captions", [])
    return isinstance(caps, list) and all(
        isinstance(c, dict) and _is_int(c.get("image_id")) and isinstance(c.get("caption"), str) for c in caps)


# Plain-Python checks that imply validity under the schema (a fast path for large files: when one
# fails, jsonschema runs and gives the messages; the schema files stay the definition).
_FAST_VALID = {
    ("region_descriptions", True): _vg_element_ok,
    ("image_data", True): _image_data_ok,
    ("region_captions", False): _coco_style_ok,
}


def schema_errors(doc, name: str, *, items: bool = False, prefix: str = "", limit: int = 0) -> List[str]:
    """Messages of every violation of schema ``name`` by ``doc`` (``items``: ``doc`` is one element
    of the list the schema describes); ``limit`` > 0 stops after that many."""
    fast = _FAST_VALID.get((name, items))
    if fast is not None and fast(doc):
        return []
    out = []
    for e in _validator(name, items).iter_errors(doc):
        out.append(_format_error(e, prefix))
        if limit and len(out) >= limit:
            break
    return out


def detect_layout(doc, path: str = "") -> str:
    """"region_descriptions" (Visual Genome, a list) or "region_captions" (COCO-style, an object)."""
    if isinstance(doc, list):
        return "region_descriptions"
    if isinstance(doc, dict) and "images" in doc and "annotations" in doc:
        return "region_captions"
    raise ValueError(
        f"{path}: neither Visual Genome's region_descriptions.json (a list of images with 'regions') nor "
        "a COCO-style region caption file (an object with 'images' and 'annotations'); see docs/DATASETS.md"
    )


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------
def split_by_hash(image_id: int) -> int:
    """The fixed default split of an image without split information: index into SPLITS
    (80 % train, 10 % val, 10 % test by a hash of the id)."""
    h = int(hashlib.sha1(str(int(image_id)).encode()).hexdigest()[:8], 16) % 10
    return 0 if h < 8 else (1 if h == 8 else 2)


def _read_split_file(path: str) -> Dict[int, int]:
    data = load_json(path)
    errors = schema_errors(data, "splits", limit=3)
    if errors:
        raise ValueError(f"{path}: not a split file ({'; '.join(errors)})")
    from .vg import _read_splits

    return _read_splits(path)


# ---------------------------------------------------------------------------------------------
# preparation
# ---------------------------------------------------------------------------------------------
def _coco_style_inputs(doc: dict, path: str, image_root: str, split_file: Optional[str]):
    """(elements, split_of, sizes, find_image, extra counts, whole-image captions) of a COCO-style file."""
    errors = schema_errors(doc, "region_captions", limit=5)
    if errors:
        raise ValueError(f"{path}: does not follow the region caption schema: " + "; ".join(errors)
                         + " (tools/check_dataset.py lists every problem)")
    file_split = _read_split_file(split_file) if split_file else {}
    images = {}
    split_of: Dict[int, int] = {}
    sizes: Dict[int, tuple] = {}
    extra = {"duplicate_image": 0, "unknown_image_id": 0}
    for im in doc["images"]:
        iid = int(im["id"])
        if iid in images:
            extra["duplicate_image"] += 1
            continue
        images[iid] = im
        sizes[iid] = (int(im["width"]), int(im["height"]))
        if "split" in im:
            split_of[iid] = SPLITS.index(im["split"])
        elif file_split:
            if iid in file_split:
                split_of[iid] = file_split[iid]
        else:
            split_of[iid] = split_by_hash(iid)
    regions: Dict[int, list] = {iid: [] for iid in images}
    for k, a in enumerate(doc["annotations"]):
        iid = int(a["image_id"])
        if iid not in regions:
            extra["unknown_image_id"] += 1
            continue
        x, y, w, h = a["bbox"]
        regions[iid].append({"region_id": int(a.get("id", k)), "x": x, "y": y, "width": w, "height": h,
                             "phrase": a["caption"]})
    root = image_root

    def find_image(iid: int) -> Optional[str]:
        p = os.path.join(root, images[iid]["file_name"])
        return p if os.path.isfile(p) else None

    elements = ({"image_id": iid, "regions": regs} for iid, regs in regions.items())
    captions = [{"image_id": int(c["image_id"]), "caption": c["caption"],
                 "file_name": os.path.abspath(os.path.join(root, images[int(c["image_id"])]["file_name"]))}
                for c in doc.get("image_captions", []) if int(c["image_id"]) in images]
    return elements, split_of, sizes, find_image, extra, captions


def _vg_inputs(path: str, image_root: str, split_file: Optional[str]):
    from .vg import _read_sizes, image_dirs_under, index_image_dirs

    here = os.path.dirname(os.path.abspath(path))
    if split_file:
        split_of = _read_split_file(split_file)
    else:
        split_of = {}
        for el in iter_json_list(path):
            iid = el.get("image_id", el.get("id")) if isinstance(el, dict) else None
            if iid is not None:
                split_of[int(iid)] = split_by_hash(int(iid))
    image_data = os.path.join(here, IMAGE_DATA_NAME)
    sizes, coco_of = _read_sizes(image_data, split_of) if os.path.isfile(image_data) else ({}, {})
    find_image = index_image_dirs(image_dirs_under(image_root)).get
    return iter_json_list(path), split_of, sizes, coco_of, find_image


def prepare_region_captions(
    json_file: str,
    image_root: str,
    output: str,
    *,
    split_file: Optional[str] = None,
    max_tokens: int = 15,
    min_token_count: int = 15,
    verbose: bool = False,
) -> Dict:
    """Prepare a region caption file (either layout) into ``output`` (a prepared directory); returns
    the drop report (also ``output/report.json``). Whole-image captions of a COCO-style file are
    written to ``captions.json`` beside ``output``."""
    from .vg import prepare_regions

    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"region caption file not found: {json_file}")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"image folder not found: {image_root} (for {json_file})")
    if split_file is None:  # the split file beside the annotation file, when there is one
        beside = os.path.join(os.path.dirname(os.path.abspath(json_file)), SPLIT_FILE_NAME)
        split_file = beside if os.path.isfile(beside) else None
    with open(json_file, "rb") as f:
        first = f.read(4096).lstrip()
    if first.startswith(b"["):
        elements, split_of, sizes, coco_of, find_image = _vg_inputs(json_file, image_root, split_file)
        extra, captions = {}, []
    else:
        doc = load_json(json_file)
        detect_layout(doc, json_file)
        elements, split_of, sizes, find_image, extra, captions = _coco_style_inputs(doc, json_file, image_root, split_file)
        coco_of = {}
    report = prepare_regions(
        elements, source=json_file, split_of=split_of, sizes=sizes, coco_of=coco_of, find_image=find_image,
        read_header_sizes=True, output=output, max_tokens=max_tokens, min_token_count=min_token_count,
        extra_counts=extra, verbose=verbose,
    )
    if captions:
        from densecap.utils.io import atomic_write_json

        files = {c["image_id"]: c["file_name"] for c in captions}
        atomic_write_json(os.path.join(os.path.dirname(os.path.abspath(output)), "captions.json"), {
            "images": [{"id": i, "file_name": f} for i, f in sorted(files.items())],
            "annotations": [{"id": k, "image_id": c["image_id"], "caption": c["caption"]} for k, c in enumerate(captions)],
        })
    return report


def _stat_key(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def _cache_key(json_file: str, image_root: str, split_file: Optional[str], max_tokens: int, min_token_count: int,
               *, image_root_mtime: bool = True) -> str:
    """What a preparation depends on, hashed: the files read (path, size, mtime), the image folder
    (path, and its mtime unless ``image_root_mtime`` is False) and the options."""
    root = _stat_key(image_root) if image_root_mtime else os.path.abspath(image_root)
    parts = [f"v{_CACHE_VERSION}", _stat_key(json_file), root,
             _stat_key(split_file) if split_file else "-", f"{int(max_tokens)}:{int(min_token_count)}"]
    here = os.path.dirname(os.path.abspath(json_file))
    for beside in (SPLIT_FILE_NAME, IMAGE_DATA_NAME):  # read when present
        p = os.path.join(here, beside)
        parts.append(_stat_key(p) if os.path.isfile(p) else "-")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


_PREPARED: Dict[str, str] = {}


def _summary(report: Dict) -> str:
    kept = sum(report.get("regions_kept", {}).values())
    dropped = {k: v for k, v in report.items() if isinstance(v, int) and v and k in (
        "zero_area", "outside_image", "empty_caption", "too_long", "missing_image", "no_regions", "invalid_box",
        "missing_size", "not_in_split", "duplicate_image", "unknown_image_id")}
    images = report.get("images_kept", {})
    return (f"kept {kept} of {report.get('regions_total', 0)} regions in "
            f"{' / '.join(f'{images.get(s, 0)} {s}' for s in SPLITS)} images; "
            f"dropped: {', '.join(f'{k} {v}' for k, v in dropped.items()) or 'nothing'}")


def prepared_region_captions(
    json_file: str,
    image_root: str = "",
    *,
    cache_root: str,
    split_file: Optional[str] = None,
    max_tokens: int = 15,
    min_token_count: int = 15,
) -> str:
    """The prepared directory of a region caption file, prepared on first use (see the module
    docstring for the cache). ``image_root`` empty = the annotation file's folder."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"region caption file not found: {json_file}")
    image_root = image_root or os.path.dirname(os.path.abspath(json_file))
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"image folder not found: {image_root} (for {json_file})")
    # within a process a dataset keeps the preparation it was first given unless one of its files
    # changes (images added to the folder during a run do not switch it mid-run)
    memo = os.path.abspath(cache_root) + "|" + _cache_key(json_file, image_root, split_file, max_tokens,
                                                          min_token_count, image_root_mtime=False)
    if memo in _PREPARED and os.path.isdir(_PREPARED[memo]):
        return _PREPARED[memo]
    key = _cache_key(json_file, image_root, split_file, max_tokens, min_token_count)
    stem = os.path.splitext(os.path.basename(json_file))[0]
    top = os.path.join(cache_root, f"{stem}-{key}")
    prepared = os.path.join(top, "prepared")
    if os.path.isfile(os.path.join(prepared, "report.json")):
        with open(os.path.join(prepared, "report.json"), encoding="utf-8") as f:
            logger.info("%s: prepared before, in %s: %s", json_file, prepared, _summary(json.load(f)))
    else:
        os.makedirs(cache_root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{stem}-{key}.", dir=cache_root)
        try:
            report = prepare_region_captions(
                json_file, image_root, os.path.join(tmp, "prepared"), split_file=split_file,
                max_tokens=max_tokens, min_token_count=min_token_count)
            try:
                os.rename(tmp, top)  # atomic: a reader sees all of it or nothing
            except OSError:
                if not os.path.isfile(os.path.join(prepared, "report.json")):
                    raise
                # another process prepared it at the same time: keep theirs
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("%s: prepared into %s: %s (every count: %s)", json_file, prepared, _summary(report),
                    os.path.join(prepared, "report.json"))
    _PREPARED[memo] = prepared
    return prepared


# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------
def parse_regions_name(name: str) -> Tuple[str, str, str]:
    """``"regions:PATH.json:IMAGE_ROOT:SPLIT"`` -> (PATH.json, IMAGE_ROOT, SPLIT); IMAGE_ROOT may be
    empty (the annotation file's folder)."""
    rest = name[len(REGIONS_PREFIX):]
    parts = rest.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or parts[2] not in SPLITS:
        raise ValueError(f"dataset '{name}': expected 'regions:PATH.json:IMAGE_ROOT:SPLIT' with SPLIT one of {SPLITS}")
    return parts[0], parts[1], parts[2]


def register_region_captions(
    name: str,
    json_file: str,
    image_root: str = "",
    *,
    split: Optional[str] = None,
    split_file: Optional[str] = None,
    max_tokens: Optional[int] = None,
    min_token_count: Optional[int] = None,
) -> List[str]:
    """Register a region caption file (either layout) in the dataset catalog, prepared on first use.

    Registers ``name`` for one split when ``split`` is given, else ``name_train``, ``name_val`` and
    ``name_test``; returns the registered names. ``max_tokens`` / ``min_token_count`` default to
    ``DATASETS.REGIONS_MAX_TOKENS`` / ``DATASETS.REGIONS_MIN_TOKEN_COUNT``.
    """
    from .catalog import DatasetCatalog

    json_file = os.path.abspath(json_file)
    image_root = os.path.abspath(image_root) if image_root else ""
    names = {name: split} if split else {f"{name}_{s}": s for s in SPLITS}
    if split is not None and split not in SPLITS:
        raise ValueError(f"register_region_captions: split must be one of {SPLITS}, got {split!r}")
    for n, s in names.items():
        def resolve(cache_root: str, options: Dict, s=s) -> Tuple[str, str]:
            return prepared_region_captions(
                json_file, image_root, cache_root=cache_root, split_file=split_file,
                max_tokens=max_tokens if max_tokens is not None else options.get("max_tokens", 15),
                min_token_count=min_token_count if min_token_count is not None else options.get("min_token_count", 15),
            ), s

        DatasetCatalog.register_lazy(n, resolve)
    return list(names)
