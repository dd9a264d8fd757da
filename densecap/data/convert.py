"""Converters into the project's region caption JSON (COCO-style, ``docs/DATASETS.md``).

``tools/convert_dataset.py --from {csv,label-studio,coco,vg} --input FILE [--image-root DIR]
--output annotations.json`` (``--to vg`` writes Visual Genome's three files into the folder
``--output`` instead, e.g. for ``tools/evaluate.py --gt``).

Inputs:

* ``csv``: a header line ``image,x,y,w,h,caption`` (more columns are ignored), one region per row,
  box in pixels, image names relative to ``--image-root`` (default: the CSV's folder). Image
  sizes come from the image headers; image ids are given in order of first appearance (1, 2, ...).
* ``label-studio``: Label Studio's JSON export of image tasks (a list of tasks, or one task): each
  ``RectangleLabels`` / ``Rectangle`` result is a region, its caption the ``TextArea`` result with
  the same ``id`` (a per-region TextArea); coordinates are percentages of ``original_width`` /
  ``original_height``. A TextArea not attached to a region is a whole-image caption. The first
  annotation of a task that was not cancelled is used; the image file name is the task's image URL
  path's last part (``?d=`` path of local-storage URLs), relative to ``--image-root``.
* ``coco``: the COCO-style region caption file itself (cleaned, checked against its schema).
* ``vg``: Visual Genome's ``region_descriptions.json``, with ``image_data.json`` (sizes) and
  ``densecap_splits.json`` (splits) beside it when present; images ``<image_id>.jpg`` under
  ``--image-root`` or its ``VG_100K*`` folders (needed when there is no ``image_data.json``).

A converter never invents data: a region without a caption, with a box that is not four numbers
or a rotated box, and an image whose size is unknown are left out and reported (counted by
reason, with the first examples). Boxes are written as given (outside the image or zero-area
ones too: ``tools/check_dataset.py`` reports them, preparation drops them).
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
import urllib.parse
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

from densecap.utils.io import atomic_write_json

from .json_stream import JSONStreamError, iter_json_list, load_json
from .prepared import SPLITS
from .region_captions import IMAGE_DATA_NAME, SPLIT_FILE_NAME, _read_split_file, schema_errors

logger = logging.getLogger(__name__)

FORMATS = ("csv", "label-studio", "coco", "vg")
CSV_COLUMNS = ("image", "x", "y", "w", "h", "caption")
RECT_TYPES = ("rectanglelabels", "rectangle")
_EXAMPLES = 3


class ConversionError(ValueError):
    """The input cannot be read as the named format (the message names the file)."""


class Problems:
    """What a converter left out: counts by reason and the first examples of each."""

    def __init__(self) -> None:
        self.counts: Dict[str, int] = OrderedDict()
        self.examples: Dict[str, List[str]] = {}

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < _EXAMPLES:
            ex.append(example)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def lines(self) -> List[str]:
        out = []
        for reason, n in self.counts.items():
            out.append(f"  {reason}: {n} left out")
            out.extend(f"    e.g. {e}" for e in self.examples[reason])
        return out


def _header_size(path: str) -> Optional[Tuple[int, int]]:
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001 - unreadable means unknown size
        return None


def _number(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _box(values) -> Optional[List[float]]:
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        return None
    b = [_number(v) for v in values]
    return None if any(v is None for v in b) else [int(v) if float(v).is_integer() else v for v in b]


def _caption(v) -> Optional[str]:
    if isinstance(v, list):
        v = " ".join(str(t) for t in v if isinstance(t, str) and t.strip())
    if not isinstance(v, str) or not v.strip():
        return None
    return v.strip()


def _add_region(b, problems, where: str, image_id: int, raw_box, raw_caption, region_id=None,
                bad_box_detail: Optional[str] = None) -> None:
    """Add one region to ``b``, or report why it is left out (a malformed box, no caption): never invents data."""
    box = _box(raw_box)
    if box is None:
        problems.add("bad_box", where if bad_box_detail is None else f"{where}: {bad_box_detail}")
        return
    cap = _caption(raw_caption)
    if cap is None:
        problems.add("missing_caption", where)
        return
    b.region(image_id, box, cap, region_id if isinstance(region_id, int) else None)


class _Builder:
    def __init__(self) -> None:
        self.images: List[dict] = []
        self.annotations: List[dict] = []
        self.image_captions: List[dict] = []

    def image(self, iid: int, file_name: str, width: int, height: int, split: Optional[str] = None) -> None:
        im = {"id": int(iid), "file_name": file_name, "width": int(width), "height": int(height)}
        if split is not None:
            im["split"] = split
        self.images.append(im)

    def region(self, iid: int, box: List[float], caption: str, rid: Optional[int] = None) -> None:
        self.annotations.append({"id": int(rid) if rid is not None else len(self.annotations) + 1,
                                 "image_id": int(iid), "bbox": box, "caption": caption})

    def doc(self) -> dict:
        d = {"images": self.images, "annotations": self.annotations}
        if self.image_captions:
            d["image_captions"] = self.image_captions
        return d


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------
def from_csv(path: str, image_root: str = "", problems: Optional[Problems] = None) -> dict:
    problems = problems if problems is not None else Problems()
    image_root = image_root or os.path.dirname(os.path.abspath(path))
    b = _Builder()
    ids: Dict[str, Optional[int]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConversionError(f"{path}: the header line must name the columns {','.join(CSV_COLUMNS)} "
                                  f"(missing: {', '.join(missing)}; found: {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            name = (row.get("image") or "").strip()
            where = f"{path} line {line}"
            if not name:
                problems.add("missing_image_name", where)
                continue
            if name not in ids:
                size = _header_size(os.path.join(image_root, name))
                if size is None:
                    problems.add("unknown_image_size", f"{where}: {os.path.join(image_root, name)} cannot be read")
                    ids[name] = None
                else:
                    ids[name] = len(b.images) + 1
                    b.image(ids[name], name, *size)
            iid = ids[name]
            if iid is None:
                problems.add("region_of_unknown_image", where)
                continue
            raw = [row.get(k) for k in ("x", "y", "w", "h")]
            _add_region(b, problems, where, iid, raw, row.get("caption"), bad_box_detail=str(raw))
    return b.doc()


def _ls_file_name(url: str) -> str:
    u = urllib.parse.urlparse(url)
    q = urllib.parse.parse_qs(u.query)
    if "d" in q and q["d"]:  # local storage: /data/local-files/?d=folder/image.jpg
        return q["d"][0]
    return os.path.basename(urllib.parse.unquote(u.path))


def from_label_studio(path: str, image_root: str = "", problems: Optional[Problems] = None) -> dict:
    problems = problems if problems is not None else Problems()
    image_root = image_root or os.path.dirname(os.path.abspath(path))
    data = load_json(path)
    tasks = [data] if isinstance(data, dict) else data
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ConversionError(f"{path}: not a Label Studio JSON export (a list of tasks with 'data' and 'annotations')")
    b = _Builder()
    seen = set()
    for k, task in enumerate(tasks):
        where = f"{path} task {task.get('id', k)}"
        if "data" not in task or not isinstance(task["data"], dict):
            raise ConversionError(f"{where}: no 'data' (not a Label Studio JSON export)")
        url = task["data"].get("image")
        if not isinstance(url, str):
            url = next((v for v in task["data"].values() if isinstance(v, str)), None)
        if url is None:
            problems.add("no_image", where)
            continue
        iid = int(task.get("id", k + 1))
        if iid in seen:
            problems.add("duplicate_task", where)
            continue
        seen.add(iid)
        annotations = [a for a in (task.get("annotations") or task.get("completions") or [])
                       if isinstance(a, dict) and not a.get("was_cancelled")]
        if len(annotations) > 1:
            problems.add("extra_annotation", f"{where}: {len(annotations) - 1} more annotation(s), the first is used")
        results = annotations[0].get("result", []) if annotations else []
        rects: "OrderedDict[str, dict]" = OrderedDict()
        texts: Dict[str, list] = {}
        free_texts = []
        for r in results:
            if str(r.get("type", "")).lower() in RECT_TYPES:
                rects[str(r.get("id"))] = r
        for r in results:
            if str(r.get("type", "")).lower() == "textarea":
                # a per-region text shares its region's id (and carries its box); any other is about the image
                if str(r.get("id")) in rects or "x" in (r.get("value") or {}):
                    texts.setdefault(str(r.get("id")), []).append(r)
                else:
                    free_texts.append(r)
        size = None
        for r in list(rects.values()) + [t for ts in texts.values() for t in ts]:
            if _number(r.get("original_width")) and _number(r.get("original_height")):
                size = (int(r["original_width"]), int(r["original_height"]))
                break
        file_name = _ls_file_name(url)
        if size is None:
            size = _header_size(os.path.join(image_root, file_name))
        if size is None:
            problems.add("unknown_image_size", f"{where}: no original_width/height and {file_name} cannot be read")
            continue
        W, H = size
        b.image(iid, file_name, W, H)
        for rid, r in rects.items():
            v = r.get("value") or {}
            rwhere = f"{where} region {rid}"
            if _number(v.get("rotation")) not in (None, 0.0):
                problems.add("rotated_box", f"{rwhere}: rotation {v.get('rotation')}")
                continue
            pct = _box([v.get("x"), v.get("y"), v.get("width"), v.get("height")])
            if pct is None:
                problems.add("bad_box", rwhere)
                continue
            ow = _number(r.get("original_width")) or W
            oh = _number(r.get("original_height")) or H
            box = [pct[0] * ow / 100.0, pct[1] * oh / 100.0, pct[2] * ow / 100.0, pct[3] * oh / 100.0]
            caps = [c for c in (_caption(t) for tr in texts.get(rid, []) for t in (tr.get("value") or {}).get("text", []))
                    if c is not None]
            if not caps:
                problems.add("missing_caption", rwhere)
                continue
            for c in caps:
                b.region(iid, [round(x, 4) for x in box], c)
        for rid in texts:
            if rid not in rects:
                problems.add("caption_without_region", f"{where} text {rid}")
        for tr in free_texts:
            for t in (tr.get("value") or {}).get("text", []):
                c = _caption(t)
                if c is not None:
                    b.image_captions.append({"image_id": iid, "caption": c})
    return b.doc()


def from_coco(path: str, image_root: str = "", problems: Optional[Problems] = None) -> dict:
    problems = problems if problems is not None else Problems()
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise ConversionError(f"{path}: a COCO-style file needs 'images' and 'annotations' lists (docs/DATASETS.md)")
    b = _Builder()
    ids = set()
    for k, im in enumerate(data["images"]):
        where = f"{path} images[{k}]"
        if not isinstance(im, dict) or not all(key in im for key in ("id", "file_name")):
            problems.add("bad_image", where)
            continue
        w, h = _number(im.get("width")), _number(im.get("height"))
        if not (w and h):
            size = _header_size(os.path.join(image_root or os.path.dirname(os.path.abspath(path)), str(im["file_name"])))
            if size is None:
                problems.add("unknown_image_size", where)
                continue
            w, h = size
        split = im.get("split") if im.get("split") in SPLITS else None
        if int(im["id"]) in ids:
            problems.add("duplicate_image", where)
            continue
        ids.add(int(im["id"]))
        b.image(int(im["id"]), str(im["file_name"]), int(w), int(h), split)
    for k, a in enumerate(data["annotations"]):
        where = f"{path} annotations[{k}]"
        if not isinstance(a, dict) or a.get("image_id") not in ids:
            problems.add("region_of_unknown_image", where)
            continue
        _add_region(b, problems, where, int(a["image_id"]), a.get("bbox"), a.get("caption"), a.get("id"),
                    bad_box_detail=str(a.get("bbox")))
    for k, c in enumerate(data.get("image_captions") or []):
        cap = _caption(c.get("caption")) if isinstance(c, dict) else None
        if cap is None or c.get("image_id") not in ids:
            problems.add("bad_image_caption", f"{path} image_captions[{k}]")
            continue
        b.image_captions.append({"image_id": int(c["image_id"]), "caption": cap})
    return b.doc()


def _vg_image_files(image_root: str) -> Dict[int, str]:
    """``{image_id: path relative to image_root}`` of ``<id>.jpg`` in image_root and its VG_100K* folders."""
    from .vg import image_dirs_under, index_image_dirs

    if not image_root or not os.path.isdir(image_root):
        return {}
    return {i: os.path.relpath(p, image_root) for i, p in index_image_dirs(image_dirs_under(image_root)).items()}


def from_vg(path: str, image_root: str = "", problems: Optional[Problems] = None) -> dict:
    problems = problems if problems is not None else Problems()
    here = os.path.dirname(os.path.abspath(path))
    sizes: Dict[int, Tuple[int, int]] = {}
    p = os.path.join(here, IMAGE_DATA_NAME)
    if os.path.isfile(p):
        for d in iter_json_list(p):
            iid = d.get("image_id", d.get("id")) if isinstance(d, dict) else None
            if iid is not None and _number(d.get("width")) and _number(d.get("height")):
                sizes[int(iid)] = (int(d["width"]), int(d["height"]))
    split_of: Dict[int, str] = {}
    p = os.path.join(here, SPLIT_FILE_NAME)
    if os.path.isfile(p):
        split_of = {iid: SPLITS[si] for iid, si in _read_split_file(p).items()}
    files = _vg_image_files(image_root)
    b = _Builder()
    seen = set()
    try:
        for k, el in enumerate(iter_json_list(path)):
            if not isinstance(el, dict):
                raise ConversionError(f"{path}: element {k} is not an object (not VG's region_descriptions.json)")
            iid = el.get("id", el.get("image_id"))
            if iid is None:
                problems.add("no_image_id", f"{path} element {k}")
                continue
            iid = int(iid)
            if iid in seen:
                problems.add("duplicate_image", f"{path} image {iid}")
                continue
            seen.add(iid)
            name = files.get(iid, f"{iid}.jpg")
            size = sizes.get(iid) or _header_size(os.path.join(image_root or here, name))
            if size is None:
                problems.add("unknown_image_size", f"{path} image {iid}: not in {IMAGE_DATA_NAME} and no readable {name}")
                continue
            b.image(iid, name, size[0], size[1], split_of.get(iid))
            for r in el.get("regions") or []:
                rid = r.get("region_id", r.get("id"))
                where = f"{path} image {iid} region {rid}"
                _add_region(b, problems, where, iid,
                            [r.get("x"), r.get("y"), r.get("width", r.get("w")), r.get("height", r.get("h"))],
                            r.get("phrase"), rid)
    except JSONStreamError as e:
        raise ConversionError(str(e)) from e
    return b.doc()


READERS = {"csv": from_csv, "label-studio": from_label_studio, "coco": from_coco, "vg": from_vg}


def convert(fmt: str, path: str, image_root: str = "", problems: Optional[Problems] = None) -> dict:
    """The region caption document (COCO-style dict) of ``path`` read as ``fmt`` (FORMATS)."""
    if fmt not in READERS:
        raise ValueError(f"unknown input format '{fmt}'; one of {FORMATS}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file not found: {path}")
    try:
        doc = READERS[fmt](path, image_root, problems)
    except (JSONStreamError, UnicodeDecodeError, csv.Error) as e:
        raise ConversionError(f"{path}: cannot be read as {fmt}: {e}") from e
    errors = schema_errors(doc, "region_captions", limit=3)
    assert not errors, errors  # what the readers build always follows the schema
    return doc


# ---------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------
def write_region_captions(doc: dict, path: str) -> None:
    atomic_write_json(path, doc)


def write_vg(doc: dict, folder: str) -> List[str]:
    """Visual Genome's ``region_descriptions.json``, ``image_data.json`` and (when any image has a
    split) ``densecap_splits.json`` of a region caption document, into ``folder``."""
    by_image: Dict[int, list] = {int(im["id"]): [] for im in doc["images"]}
    for a in doc["annotations"]:
        x, y, w, h = a["bbox"]
        by_image[int(a["image_id"])].append({"region_id": a.get("id"), "image_id": int(a["image_id"]),
                                             "x": x, "y": y, "width": w, "height": h, "phrase": a["caption"]})
    written = [os.path.join(folder, "region_descriptions.json"), os.path.join(folder, IMAGE_DATA_NAME)]
    atomic_write_json(written[0], [{"id": i, "regions": r} for i, r in by_image.items()])
    atomic_write_json(written[1], [{"image_id": int(im["id"]), "width": im["width"], "height": im["height"]}
                                   for im in doc["images"]])
    if any("split" in im for im in doc["images"]):
        splits = {s: [int(im["id"]) for im in doc["images"] if im.get("split") == s] for s in SPLITS}
        written.append(os.path.join(folder, SPLIT_FILE_NAME))
        atomic_write_json(written[2], splits)
    return written


# ---------------------------------------------------------------------------------------------
# command line (tools/convert_dataset.py)
# ---------------------------------------------------------------------------------------------
def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Convert region captions into the project's region caption JSON (docs/DATASETS.md).")
    p.add_argument("--from", dest="fmt", required=True, choices=FORMATS, help="input format")
    p.add_argument("--input", required=True, help="input file (vg: region_descriptions.json)")
    p.add_argument("--image-root", default="", help="folder the image names are relative to "
                   "(default: the input's folder); image sizes are read from the files when the input lacks them")
    p.add_argument("--output", required=True, help="output annotations.json (--to vg: an output folder)")
    p.add_argument("--to", default="coco", choices=("coco", "vg"),
                   help="coco: the COCO-style region caption file (default); vg: Visual Genome's files")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problems = Problems()
    try:
        doc = convert(args.fmt, args.input, args.image_root, problems)
    except (FileNotFoundError, ConversionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.to == "vg":
        written = write_vg(doc, args.output)
        renamed = [im["file_name"] for im in doc["images"] if os.path.basename(im["file_name"]) != f"{im['id']}.jpg"]
        if renamed:
            print(f"note: Visual Genome's layout names images <image_id>.jpg; {len(renamed)} image(s) are named "
                  f"otherwise (e.g. {renamed[0]}): rename them, or keep the COCO-style file")
    else:
        write_region_captions(doc, args.output)
        written = [args.output]
    print(f"{args.input} ({args.fmt}): {len(doc['images'])} images, {len(doc['annotations'])} regions"
          + (f", {len(doc['image_captions'])} whole-image captions" if doc.get("image_captions") else "")
          + f" -> {', '.join(written)}")
    if problems:
        print("left out:")
        print("\n".join(problems.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
