"""Check a region caption dataset before training: ``tools/check_dataset.py``.

``tools/check_dataset.py ANNOTATIONS --image-root DIR [--json report.json] [--figure stats.png]``
reads either documented layout (``docs/DATASETS.md``): Visual Genome's ``region_descriptions.json``
(images ``<image_id>.jpg`` under ``--image-root`` or its ``VG_100K*`` folders; sizes from
``image_data.json`` beside the file when present, else from the image headers) or the COCO-style
region caption file (``file_name`` relative to ``--image-root``). It validates the file against
its JSON Schema and the images on disk, and counts, per problem, the images or regions that have it
(a region with several problems counts under each):

===================  ===========================================================================
``missing_image``    image whose file is not under the image root
``broken_image``     image file that PIL cannot open or whose ``verify()`` fails
``box_outside``      region reaching outside its image (x < 0, y < 0, x + w > width or y + h > height)
``zero_area``        region with w <= 0 or h <= 0
``empty_caption``    region whose caption is missing or has no token (the project's tokeniser)
``duplicate_region`` region repeating an earlier region of its image (same box, same tokens)
===================  ===========================================================================

and, when they occur, ``schema`` (violations of the JSON Schema), ``invalid_box`` (a box that is not
four numbers), ``unknown_image_id`` (a region of an image the file does not list),
``duplicate_image`` (an image listed twice) and ``size_mismatch`` (the file's width/height differ
from the image header's). Image files are opened for their header and ``verify()`` only, never
decoded. Nothing is modified.

Exit status: 0 no problem, 1 problems, 2 the annotation file cannot be read.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from array import array
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from densecap.utils.io import atomic_write_json

from .json_stream import JSONStreamError, iter_json_list, load_json
from .region_captions import IMAGE_DATA_NAME, detect_layout, schema_errors
from .tokenizer import tokenize
from .vg import image_dirs_under, index_image_dirs

logger = logging.getLogger(__name__)

PROBLEMS = ("missing_image", "broken_image", "box_outside", "zero_area", "empty_caption", "duplicate_region")
EXTRA_PROBLEMS = ("schema", "invalid_box", "unknown_image_id", "duplicate_image", "size_mismatch")
# words left out of the figure's "top words" panel
STOP_WORDS = frozenset("a an the of on in with and is are to at by for from it its this that".split())
EXAMPLES = 5


class DatasetUnreadable(ValueError):
    """The annotation file itself cannot be read (exit status 2)."""


class _Stats:
    """Per-image and per-region numbers the figure shows (compact arrays)."""

    def __init__(self) -> None:
        self.boxes_per_image = array("i")
        self.box_w = array("f")
        self.box_h = array("f")
        self.caption_len = array("i")
        self.words: Counter = Counter()


class _Checker:
    def __init__(self, image_root: str) -> None:
        self.image_root = image_root
        self.problems: Dict[str, int] = {k: 0 for k in PROBLEMS + EXTRA_PROBLEMS}
        self.examples: Dict[str, List[str]] = {}
        self.images = 0
        self.regions = 0
        self.stats = _Stats()

    def problem(self, kind: str, example: str) -> None:
        self.problems[kind] += 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < EXAMPLES:
            ex.append(example)

    def image_file(self, where: str, path: str) -> Optional[Tuple[int, int]]:
        """The (w, h) of an image file from its header; counts missing/broken images."""
        from PIL import Image

        if not os.path.isfile(path):
            self.problem("missing_image", f"{where}: {path} not found")
            return None
        try:
            with Image.open(path) as im:
                size = (int(im.size[0]), int(im.size[1]))
                im.verify()
        except Exception as e:  # noqa: BLE001 - any failure to read is a broken image
            self.problem("broken_image", f"{where}: {path}: {type(e).__name__}: {e}")
            return None
        return size

    def image(self, where: str, regions: Sequence[Tuple[str, object, object]], size: Optional[Tuple[int, int]]) -> None:
        """One image's regions: ``(where, box [x, y, w, h] or None, caption)``."""
        self.images += 1
        self.stats.boxes_per_image.append(len(regions))
        seen = set()
        for rwhere, box, caption in regions:
            self.regions += 1
            tokens = tokenize(caption) if isinstance(caption, str) else []
            if not tokens:
                self.problem("empty_caption", f"{rwhere}: caption {caption!r}")
            else:
                self.stats.caption_len.append(len(tokens))
                self.stats.words.update(t for t in tokens if t not in STOP_WORDS)
            b = _box(box)
            if b is None:
                self.problem("invalid_box", f"{rwhere}: box {box!r}")
                continue
            x, y, w, h = b
            shown = "[" + ", ".join(f"{v:g}" for v in b) + "]"
            if not (w > 0 and h > 0):
                self.problem("zero_area", f"{rwhere}: box {shown}")
            else:
                self.stats.box_w.append(w)
                self.stats.box_h.append(h)
            if size is not None and (x < 0 or y < 0 or x + w > size[0] or y + h > size[1]):
                self.problem("box_outside", f"{rwhere}: box {shown} in a {size[0]}x{size[1]} image")
            key = (x, y, w, h, " ".join(tokens))
            if key in seen:
                self.problem("duplicate_region", f"{rwhere}: box {shown} caption {caption!r}")
            seen.add(key)

    def report(self, path: str, layout: str) -> dict:
        problems = {k: v for k, v in self.problems.items() if k in PROBLEMS or v}
        return {
            "file": path, "layout": layout, "image_root": self.image_root,
            "images": self.images, "regions": self.regions, "problems": problems,
            "examples": {k: v for k, v in self.examples.items() if v},
        }


def _box(box) -> Optional[Tuple[float, float, float, float]]:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    try:
        b = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        return None
    return b if all(math.isfinite(v) for v in b) and not any(isinstance(v, bool) for v in box) else None


def _check_coco_style(c: _Checker, doc: dict, path: str) -> None:
    for msg in schema_errors(doc, "region_captions"):
        c.problem("schema", msg)
    by_image: Dict[int, list] = {}
    order: List[Tuple[int, dict]] = []
    for k, im in enumerate(doc.get("images") or []):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int):
            continue  # a schema problem
        if im["id"] in by_image:
            c.problem("duplicate_image", f"images[{k}]: id {im['id']} listed before")
            continue
        by_image[im["id"]] = []
        order.append((k, im))
    for k, a in enumerate(doc.get("annotations") or []):
        if not isinstance(a, dict):
            continue
        iid = a.get("image_id")
        if iid not in by_image:
            c.problem("unknown_image_id", f"annotations[{k}]: image_id {iid!r} is not in 'images'")
            continue
        by_image[iid].append((f"annotations[{k}] (image {iid})", a.get("bbox"), a.get("caption")))
    for k, im in order:
        where = f"images[{k}] (id {im['id']})"
        header = c.image_file(where, os.path.join(c.image_root, str(im.get("file_name", ""))))
        size = None
        if isinstance(im.get("width"), (int, float)) and isinstance(im.get("height"), (int, float)):
            size = (im["width"], im["height"])
            if header is not None and tuple(header) != (int(size[0]), int(size[1])):
                c.problem("size_mismatch", f"{where}: {size[0]}x{size[1]} in the file, {header[0]}x{header[1]} on disk")
        else:
            size = header
        c.image(where, by_image[im["id"]], size)


def _check_vg(c: _Checker, path: str) -> None:
    here = os.path.dirname(os.path.abspath(path))
    sizes: Dict[int, Tuple[int, int]] = {}
    image_data = os.path.join(here, IMAGE_DATA_NAME)
    if os.path.isfile(image_data):
        for k, d in enumerate(iter_json_list(image_data)):
            for msg in schema_errors(d, "image_data", items=True, prefix=f"{IMAGE_DATA_NAME}[{k}]"):
                c.problem("schema", msg)
            if isinstance(d, dict) and isinstance(d.get("width"), int) and isinstance(d.get("height"), int):
                iid = d.get("image_id", d.get("id"))
                if isinstance(iid, int):
                    sizes[iid] = (d["width"], d["height"])
    files = index_image_dirs(image_dirs_under(c.image_root)) if os.path.isdir(c.image_root) else {}
    seen = set()
    for k, el in enumerate(iter_json_list(path)):
        for msg in schema_errors(el, "region_descriptions", items=True, prefix=f"[{k}]", limit=EXAMPLES):
            c.problem("schema", msg)
        if not isinstance(el, dict):
            continue
        iid = el.get("id", el.get("image_id"))
        if not isinstance(iid, int):
            continue
        if iid in seen:
            c.problem("duplicate_image", f"[{k}]: image {iid} listed before")
            continue
        seen.add(iid)
        where = f"image {iid}"
        header = c.image_file(where, files.get(iid, os.path.join(c.image_root, f"{iid}.jpg")))
        size = sizes.get(iid)
        if size is not None and header is not None and tuple(header) != size:
            c.problem("size_mismatch", f"{where}: {size[0]}x{size[1]} in {IMAGE_DATA_NAME}, {header[0]}x{header[1]} on disk")
        size = size or header
        regions = []
        for j, r in enumerate(el.get("regions") or []):
            if not isinstance(r, dict):
                continue
            rid = r.get("region_id", r.get("id", j))
            box = [r.get("x"), r.get("y"), r.get("width", r.get("w")), r.get("height", r.get("h"))]
            regions.append((f"image {iid} region {rid}", box, r.get("phrase")))
        c.image(where, regions, size)


def check_dataset(path: str, image_root: str) -> Tuple[dict, _Stats]:
    """(report, figure statistics) of a region caption file; raises DatasetUnreadable."""
    if not os.path.isfile(path):
        raise DatasetUnreadable(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            head = f.read(4096).lstrip()
    except OSError as e:
        raise DatasetUnreadable(f"{path}: cannot be read: {e}") from e
    c = _Checker(image_root)
    try:
        if head.startswith(b"["):
            layout = "region_descriptions"
            _check_vg(c, path)
        else:
            doc = load_json(path)
            layout = detect_layout(doc, path)
            if layout == "region_descriptions":  # a list after leading bytes the peek did not see
                _check_vg(c, path)
            else:
                _check_coco_style(c, doc, path)
    except (JSONStreamError, UnicodeDecodeError) as e:
        raise DatasetUnreadable(f"{path}: not valid JSON: {e}") from e
    except ValueError as e:
        raise DatasetUnreadable(str(e)) from e
    return c.report(path, layout), c.stats


def format_report(report: dict) -> str:
    lines = [f"{report['file']} ({report['layout']}): {report['images']} images, {report['regions']} regions"]
    total = sum(report["problems"].values())
    lines.append("problems:" if total else "no problems")
    for k, v in report["problems"].items():
        if v or k in PROBLEMS:
            lines.append(f"  {k:17s} {v}")
        for e in report["examples"].get(k, []):
            lines.append(f"      e.g. {e}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the figure
# ---------------------------------------------------------------------------------------------
def _hist(ax, values, bins, title, xlabel, log_x=False):
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if v.size:
        if log_x:
            from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

            lo, hi = max(float(v.min()), 1e-3), max(float(v.max()), 1e-3)
            if hi / lo < 4:  # a narrow range still shows a readable span
                mid = math.sqrt(lo * hi)
                lo, hi = mid / 2, mid * 2
            bins = np.geomspace(lo, hi * 1.0001, bins)
            ax.set_xscale("log")
            ticks = [m * 10.0 ** e for e in range(-3, 6) for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi * 1.0001]
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{t:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.hist(v, bins=bins, color="#4c72b0", edgecolor="white", linewidth=0.5)
        ax.axvline(float(np.median(v)), color="#c44e52", linestyle="--", linewidth=1, label=f"median {np.median(v):.3g}")
        ax.legend(fontsize=7, frameon=False)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("count", fontsize=8)
    ax.tick_params(labelsize=7)


def save_figure(report: dict, stats: _Stats, path: str, top_words: int = 20) -> None:
    """One page: boxes per image, box size, box aspect ratio and caption length histograms, the
    top words, and the problem counts."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 3, figsize=(12, 7.2))
    bpi = np.asarray(stats.boxes_per_image, dtype=np.int64)
    _hist(axes[0, 0], bpi, np.arange(0, (bpi.max() if bpi.size else 0) + 2) - 0.5 if bpi.size and bpi.max() < 60 else 30,
          "regions per image", "regions")
    w = np.asarray(stats.box_w, dtype=np.float64)
    h = np.asarray(stats.box_h, dtype=np.float64)
    _hist(axes[0, 1], np.sqrt(w * h), 30, "box size", "sqrt(w x h), pixels", log_x=True)
    _hist(axes[0, 2], w / h if w.size else w, 30, "box aspect ratio", "w / h", log_x=True)
    cl = np.asarray(stats.caption_len, dtype=np.int64)
    _hist(axes[1, 0], cl, np.arange(0, (cl.max() if cl.size else 0) + 2) - 0.5 if cl.size and cl.max() < 60 else 30,
          "caption length", "tokens")
    ax = axes[1, 1]
    top = stats.words.most_common(top_words)
    if top:
        ax.barh(range(len(top))[::-1], [n for _, n in top], color="#55a868")
        ax.set_yticks(range(len(top))[::-1])
        ax.set_yticklabels([t for t, _ in top], fontsize=7)
    ax.set_title(f"top {len(top)} words (of {len(stats.words)}; no function words)", fontsize=9)
    ax.set_xlabel("occurrences in captions", fontsize=8)
    ax.tick_params(labelsize=7)
    ax = axes[1, 2]
    ax.axis("off")
    rows = [f"{report['images']} images, {report['regions']} regions", ""]
    rows += [f"{k}: {v}" for k, v in report["problems"].items()]
    ax.text(0.02, 0.98, "\n".join(rows), va="top", ha="left", family="monospace", fontsize=9, transform=ax.transAxes)
    ax.set_title("problems", fontsize=9)
    fig.suptitle(f"{os.path.basename(report['file'])} ({report['layout']})", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# command line (tools/check_dataset.py)
# ---------------------------------------------------------------------------------------------
def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Check a region caption dataset (VG region_descriptions.json or the COCO-style file, "
        "docs/DATASETS.md) against its schema and the images on disk. Exit 0: no problem, 1: problems, "
        "2: the file cannot be read. Nothing is modified.")
    p.add_argument("annotations", metavar="ANNOTATIONS", help="region_descriptions.json or annotations.json")
    p.add_argument("--image-root", default="", help="image folder (default: the annotation file's folder)")
    p.add_argument("--json", default="", help="write the report here")
    p.add_argument("--figure", default="", help="write the one-page statistics figure here (.png, .pdf)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    image_root = args.image_root or os.path.dirname(os.path.abspath(args.annotations))
    try:
        report, stats = check_dataset(args.annotations, image_root)
    except DatasetUnreadable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        atomic_write_json(args.json, report, indent=2)
    if args.figure:
        save_figure(report, stats, args.figure)
        print(f"figure: {args.figure}")
    return 1 if any(report["problems"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
