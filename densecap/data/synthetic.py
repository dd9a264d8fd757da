"""The built-in synthetic dataset: coloured shapes on grey backgrounds, in Visual Genome format.

::

    python -m densecap.data.synthetic --out DIR --num-images N --seed S [--size 256] [--prepare]

writes into ``DIR``::

    images/<image_id>.jpg       the scenes (JPEG, quality 95)
    image_data.json             VG v1.2 style: [{"image_id", "width", "height", "url", "coco_id", "flickr_id"}]
    region_descriptions.json    VG style: [{"id": image_id, "regions": [{"region_id", "image_id",
                                            "x", "y", "width", "height", "phrase"}]}]
    densecap_splits.json        {"train": [ids], "val": [ids], "test": [ids]}  (80/10/10)
    captions.json               whole-image captions, Karpathy-split JSON
    prepared/                   with ``--prepare``: the prepared dataset (see densecap/data/prepared.py)

Boxes are integer ``[x, y, width, height]`` in image pixels, as in Visual Genome.

Scenes hold 2-6 objects: 6 shapes x 6 colours x 2 sizes x 2 fills, placed at random with partial
overlaps limited so every object stays mostly visible, on one of five grey backgrounds (dark, light,
noisy, gradient, cluttered). The object colours are saturated and the backgrounds grey or dimly
tinted, so colour never comes from the background. Regions per image:

* one per object: ``"a small striped red circle"``, ``"a large blue square"`` (solid is unsaid);
* one or two relations between two objects, box = union of the two boxes:
  ``"a blue square left of a green star"``. The word follows from geometry, always the same way
  (see :func:`relation`), so a model can learn it; only objects whose colour+shape is unique in the
  scene take part, so the phrase names them unambiguously;
* one or two near-duplicates of an object region (box jittered, IoU >= 0.75 with the original,
  same caption or "big"/"little" for "large"/"small"), so ground-truth merging is exercised.

Every image is drawn from its own generator seeded by ``(seed, index)``: the same seed gives
byte-identical files, whatever the machine's load.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from densecap.utils.io import atomic_write_text

from .shape_words import COLOR_NAMES, FILLS, SHAPES, SIZE_SYNONYMS, SIZE_WORDS
from .tokenizer import tokenize

logger = logging.getLogger(__name__)

# RGB, saturated and far apart in hue; backgrounds never use them.
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (240, 215, 20),
    "purple": (145, 40, 195),
    "orange": (250, 130, 0),
}
assert tuple(COLORS) == COLOR_NAMES
SIZES = {"small": (28, 45), "large": (60, 100)}  # side of the shape's bounding square, pixels
assert tuple(SIZES) == SIZE_WORDS
BACKGROUNDS = ("dark", "light", "noisy", "gradient", "cluttered")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

MIN_OBJECTS, MAX_OBJECTS = 2, 6
MAX_IOU = 0.3  # between two objects' boxes
MAX_COVER = 0.35  # intersection / area of the smaller box
JPEG_QUALITY = 95
MAX_SCENE_CAPTION_TOKENS = 17


@dataclass
class Obj:
    shape: str
    color: str
    size: str
    fill: str
    box: Tuple[int, int, int, int]  # x, y, w, h (integers)

    @property
    def xyxy(self) -> Tuple[int, int, int, int]:
        x, y, w, h = self.box
        return x, y, x + w, y + h

    @property
    def center(self) -> Tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2.0, y + h / 2.0


# ---------------------------------------------------------------------------------------------
# phrases
# ---------------------------------------------------------------------------------------------
def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(o: Obj, size_word: Optional[str] = None) -> str:
    """``"a small striped red circle"``; solid objects omit the fill."""
    words = [size_word or o.size]
    if o.fill != "solid":
        words.append(o.fill)
    words += [o.color, o.shape]
    return " ".join([article(words[0])] + words)


def short_phrase(o: Obj) -> str:
    return f"{article(o.color)} {o.color} {o.shape}"


def relation(a: Obj, b: Obj) -> Optional[str]:
    """The spatial word for "a ... b", or None when the two are in no clear relation.

    Mostly horizontal (|dx| >= 2|dy| between centres): "left of"/"right of" when the boxes are
    apart along x, else "next to". Mostly vertical (|dy| >= 2|dx|): "above"/"below" when the
    boxes are apart along y. Diagonal arrangements get no relation.
    """
    (ax, ay), (bx, by) = a.center, b.center
    dx, dy = bx - ax, by - ay
    a1, a2 = a.xyxy, b.xyxy
    if abs(dx) >= 2 * abs(dy):
        if a1[2] <= a2[0]:
            return "left of"
        if a2[2] <= a1[0]:
            return "right of"
        return "next to"
    if abs(dy) >= 2 * abs(dx):
        if a1[3] <= a2[1]:
            return "above"
        if a2[3] <= a1[1]:
            return "below"
    return None


def union_box(a: Obj, b: Obj) -> Tuple[int, int, int, int]:
    x1 = min(a.xyxy[0], b.xyxy[0])
    y1 = min(a.xyxy[1], b.xyxy[1])
    x2 = max(a.xyxy[2], b.xyxy[2])
    y2 = max(a.xyxy[3], b.xyxy[3])
    return x1, y1, x2 - x1, y2 - y1


def plural(shape: str) -> str:
    return shape + "s"


def scene_caption(objs: Sequence[Obj], background: str) -> str:
    """``"two red circles and a blue triangle on a dark background"`` (groups left to right).

    When naming colours makes it longer than ``MAX_SCENE_CAPTION_TOKENS``, shapes only:
    ``"two hexagons, a star and a circle on a noisy background"``.
    """
    ordered = sorted(objs, key=lambda o: (o.center[0], o.center[1]))
    for with_color in (True, False):
        groups: Dict[Tuple[str, ...], int] = {}
        for o in ordered:
            k = (o.color, o.shape) if with_color else (o.shape,)
            groups[k] = groups.get(k, 0) + 1
        parts = []
        for k, n in groups.items():
            if n == 1:
                parts.append(f"{article(k[0])} {' '.join(k)}")
            else:
                parts.append(f"{NUMBER_WORDS[n]} {' '.join(k[:-1] + (plural(k[-1]),))}")
        listing = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        caption = f"{listing} on {article(background)} {background} background"
        if len(caption.split()) <= MAX_SCENE_CAPTION_TOKENS:
            break  # else: too long with colours, name the shapes only
    return caption


# ---------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------
def _shape_points(shape: str, cx: float, cy: float, s: float, rot: float) -> np.ndarray:
    """Polygon (K, 2) of a shape whose bounding square has side ``s`` (not used for circles)."""
    r = s / 2.0
    if shape == "square":
        pts = [(-r, -r), (r, -r), (r, r), (-r, r)]
    elif shape == "diamond":
        pts = [(0, -r), (r * 0.75, 0), (0, r), (-r * 0.75, 0)]
    elif shape == "triangle":
        pts = [(0, -r), (r, r), (-r, r)]
    elif shape == "hexagon":
        pts = [(r * math.cos(math.pi / 3 * k), r * math.sin(math.pi / 3 * k)) for k in range(6)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + math.pi / 5 * k + rot
            pts.append((rr * math.cos(ang), rr * math.sin(ang)))
    else:
        raise ValueError(f"unknown shape {shape}")
    return np.asarray(pts, dtype=np.float64) + np.asarray([cx, cy])


def _shape_extent(shape: str, s: float, rot: float) -> Tuple[float, float, float, float]:
    """Bounding box offsets (x1, y1, x2, y2) of a shape centred at 0."""
    if shape == "circle":
        r = s / 2.0
        return -r, -r, r, r
    p = _shape_points(shape, 0.0, 0.0, s, rot)
    return p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()


SUB = 4  # fixed-point bits for sub-pixel cv2 drawing


def _draw_object(img: np.ndarray, o: Obj, cx: float, cy: float, s: float, rot: float,
                 rgb: np.ndarray, stripe: Tuple[int, int]) -> None:
    x, y, w, h = o.box
    H, W = img.shape[:2]
    x0, y0 = max(x - 2, 0), max(y - 2, 0)
    x1, y1 = min(x + w + 2, W), min(y + h + 2, H)
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    f = 1 << SUB
    if o.shape == "circle":
        c = (int(round((cx - x0) * f)), int(round((cy - y0) * f)))
        cv2.circle(mask, c, int(round(s / 2.0 * f)), 255, -1, cv2.LINE_AA, SUB)
    else:
        pts = _shape_points(o.shape, cx - x0, cy - y0, s, rot)
        cv2.fillPoly(mask, [np.round(pts * f).astype(np.int32)], 255, cv2.LINE_AA, SUB)
    alpha = mask.astype(np.float32)[..., None] / 255.0  # h w 1
    color = np.broadcast_to(rgb.astype(np.float32), (y1 - y0, x1 - x0, 3))
    if o.fill == "striped":
        period, direction = stripe
        yy, xx = np.mgrid[y0:y1, x0:x1]
        t = {0: xx + yy, 1: xx - yy, 2: yy}[direction]
        on = (t % period) < (period // 2)
        color = np.where(on[..., None], color, np.float32(240.0))
    crop = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = np.clip(crop * (1 - alpha) + color * alpha + 0.5, 0, 255).astype(np.uint8)


def _noise(rng: np.random.Generator, sigma: float, H: int, W: int) -> np.ndarray:
    return rng.standard_normal((H, W, 1), dtype=np.float32) * np.float32(sigma)  # H W 1 (grey)


def _background(rng: np.random.Generator, kind: str, H: int, W: int) -> np.ndarray:
    tint = rng.uniform(-8, 8, size=3).astype(np.float32)  # dim tone, far from any object colour
    if kind in ("dark", "light", "noisy", "cluttered"):
        lo, hi, sigma = {"dark": (25, 70, 4), "light": (175, 225, 4), "noisy": (80, 170, 0),
                         "cluttered": (60, 150, 5)}[kind]
        base = rng.uniform(lo, hi)
        if kind == "noisy":
            sigma = rng.uniform(18, 30)
        img = _noise(rng, sigma, H, W) + (np.float32(base) + tint)  # H W 3
    elif kind == "gradient":
        a, b = rng.uniform(20, 110), rng.uniform(140, 230)
        if rng.random() < 0.5:
            a, b = b, a
        ang = rng.uniform(0, 2 * math.pi)
        xx = np.arange(W, dtype=np.float32)[None, :] - W / 2
        yy = np.arange(H, dtype=np.float32)[:, None] - H / 2
        t = xx * np.float32(math.cos(ang)) + yy * np.float32(math.sin(ang))  # H W
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = (np.float32(a) + np.float32(b - a) * t)[..., None] + tint + _noise(rng, 3, H, W)
    else:
        raise ValueError(kind)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if kind == "cluttered":  # thin grey lines and small grey dots, never object-sized or coloured
        for _ in range(int(rng.integers(25, 60))):
            g = float(np.clip(base + rng.uniform(-60, 60), 0, 255))
            col = (g, g, g)
            if rng.random() < 0.6:
                p1 = (int(rng.integers(0, W)), int(rng.integers(0, H)))
                ln = rng.uniform(8, 40)
                ang = rng.uniform(0, 2 * math.pi)
                p2 = (int(p1[0] + ln * math.cos(ang)), int(p1[1] + ln * math.sin(ang)))
                cv2.line(img, p1, p2, col, int(rng.integers(1, 3)), cv2.LINE_AA)
            else:
                c = (int(rng.integers(0, W)), int(rng.integers(0, H)))
                cv2.circle(img, c, int(rng.integers(2, 6)), col, -1, cv2.LINE_AA)
    return img


def _iou_cover(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> Tuple[float, float]:
    ax1, ay1, ax2, ay2 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx1, by1, bx2, by2 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw <= 0 or ih <= 0:
        return 0.0, 0.0
    inter = iw * ih
    aa, ab = a[2] * a[3], b[2] * b[3]
    return inter / (aa + ab - inter), inter / min(aa, ab)


def _jitter_box(rng: np.random.Generator, box: Tuple[int, int, int, int], H: int, W: int):
    x, y, w, h = box
    for _ in range(20):
        d = rng.uniform(-0.07, 0.07, size=4) * np.array([w, h, w, h])
        nx1 = int(round(min(max(x + d[0], 0), W - 2)))
        ny1 = int(round(min(max(y + d[1], 0), H - 2)))
        nx2 = int(round(min(max(x + w + d[2], nx1 + 1), W)))
        ny2 = int(round(min(max(y + h + d[3], ny1 + 1), H)))
        nb = (nx1, ny1, nx2 - nx1, ny2 - ny1)
        if nb != box and _iou_cover(nb, box)[0] >= 0.75:
            return nb
    return box


# ---------------------------------------------------------------------------------------------
# one scene
# ---------------------------------------------------------------------------------------------
def make_scene(seed: int, index: int, size: int = 256):
    """Draw scene ``index`` of dataset ``seed``.

    Returns ``(image RGB uint8 (size, size, 3), regions, sentences, background)`` where
    ``regions`` is a list of ``(x, y, w, h, phrase)`` with integer boxes inside the image.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    H = W = int(size)
    for _attempt in range(100):
        n_target = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
        objs: List[Obj] = []
        geo = []
        for _k in range(n_target):
            shape = SHAPES[rng.integers(len(SHAPES))]
            color = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
            size_name = "small" if rng.random() < 0.5 else "large"
            fill = FILLS[rng.integers(len(FILLS))]
            lo, hi = SIZES[size_name]
            s = float(rng.uniform(lo, hi)) * size / 256.0
            rot = float(rng.uniform(-0.3, 0.3)) if shape == "star" else 0.0
            ex = _shape_extent(shape, s, rot)
            placed = False
            for _try in range(40):
                cx = float(rng.uniform(2 - ex[0], W - 2 - ex[2]))
                cy = float(rng.uniform(2 - ex[1], H - 2 - ex[3]))
                x1, y1 = int(math.floor(cx + ex[0])), int(math.floor(cy + ex[1]))
                x2, y2 = int(math.ceil(cx + ex[2])), int(math.ceil(cy + ex[3]))
                box = (x1, y1, x2 - x1, y2 - y1)
                ok = all(
                    iou < MAX_IOU and cov < MAX_COVER
                    for iou, cov in (_iou_cover(box, o.box) for o in objs)
                )
                if ok:
                    objs.append(Obj(shape, color, size_name, fill, box))
                    geo.append((cx, cy, s, rot))
                    placed = True
                    break
            if not placed:
                break
        if len(objs) < MIN_OBJECTS:
            continue
        # relations between objects named unambiguously by colour + shape
        keys = [(o.color, o.shape) for o in objs]
        unique = [i for i, k in enumerate(keys) if keys.count(k) == 1]
        rels = []
        for i in unique:
            for j in unique:
                if i != j:
                    r = relation(objs[i], objs[j])
                    if r is not None:
                        rels.append((i, j, r))
        if rels:
            break
    else:  # pragma: no cover - astronomically unlikely
        raise RuntimeError(f"could not place a scene for seed {seed} index {index}")

    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    img = _background(rng, background, H, W)
    for o, (cx, cy, s, rot) in zip(objs, geo):
        rgb = np.asarray(COLORS[o.color], dtype=np.float64) + rng.uniform(-12, 12, size=3)
        stripe = (int(rng.integers(7, 10)), int(rng.integers(3)))
        _draw_object(img, o, cx, cy, s, rot, np.clip(rgb, 0, 255), stripe)

    regions: List[Tuple[int, int, int, int, str]] = [(*o.box, object_phrase(o)) for o in objs]
    n_rel = 1 if len(rels) == 1 or rng.random() < 0.5 else 2
    picks = rng.choice(len(rels), size=n_rel, replace=False)
    rel_regions = []
    for p in sorted(int(q) for q in picks):
        i, j, r = rels[p]
        rel_regions.append((*union_box(objs[i], objs[j]),
                            f"{short_phrase(objs[i])} {r} {short_phrase(objs[j])}"))
    n_dup = int(rng.integers(1, 3))
    for k in sorted(int(q) for q in rng.choice(len(objs), size=min(n_dup, len(objs)), replace=False)):
        o = objs[k]
        nb = _jitter_box(rng, o.box, H, W)
        word = SIZE_SYNONYMS[o.size] if rng.random() < 0.5 else None
        regions.append((*nb, object_phrase(o, word)))
    regions.extend(rel_regions)

    i, j, r = rels[int(picks[0])]
    sentences = [
        scene_caption(objs, background),
        f"{NUMBER_WORDS[len(objs)]} shapes on {article(background)} {background} background",
        f"{short_phrase(objs[i])} {r} {short_phrase(objs[j])}",
    ]
    return img, regions, sentences, background


# ---------------------------------------------------------------------------------------------
# the dataset
# ---------------------------------------------------------------------------------------------
def split_ids(ids: Sequence[int], seed: int) -> Dict[str, List[int]]:
    """80/10/10 split of ``ids`` (a deterministic shuffle); val and test non-empty from 3 images."""
    n = len(ids)
    order = np.random.default_rng([int(seed), 2**31 - 1]).permutation(n)
    n_val = max(1, int(round(0.1 * n))) if n >= 3 else 0
    n_test = n_val
    shuffled = [int(ids[k]) for k in order]
    out = {
        "train": sorted(shuffled[: n - n_val - n_test]),
        "val": sorted(shuffled[n - n_val - n_test: n - n_test]),
        "test": sorted(shuffled[n - n_test:]),
    }
    return out


def _dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


def generate(out: str, num_images: int, seed: int = 0, size: int = 256) -> Dict[str, float]:
    """Write the dataset into ``out`` (see the module docstring). Returns timing figures."""
    t0 = time.perf_counter()
    img_dir = os.path.join(out, "images")
    os.makedirs(img_dir, exist_ok=True)
    image_data, region_desc, cap_images = [], [], []
    ids = list(range(1, num_images + 1))
    splits = split_ids(ids, seed)
    split_of = {i: s for s, lst in splits.items() for i in lst}
    region_id = 0
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_OPTIMIZE, 0]
    for idx, image_id in enumerate(ids):
        img, regions, sentences, _bg = make_scene(seed, idx, size)
        fname = f"{image_id}.jpg"
        ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], params)
        if not ok:  # pragma: no cover
            raise RuntimeError("JPEG encoding failed")
        with open(os.path.join(img_dir, fname), "wb") as f:
            f.write(buf.tobytes())
        H, W = img.shape[:2]
        image_data.append({"image_id": image_id, "width": W, "height": H,
                           "url": f"images/{fname}", "coco_id": None, "flickr_id": None})
        regs = []
        for x, y, w, h, phrase in regions:
            region_id += 1
            regs.append({"region_id": region_id, "image_id": image_id, "x": x, "y": y,
                         "width": w, "height": h, "phrase": phrase})
        region_desc.append({"id": image_id, "regions": regs})
        sents = []
        for raw in sentences:
            sents.append({"tokens": tokenize(raw), "raw": raw, "imgid": idx, "sentid": 0})
        cap_images.append({"filepath": "images", "filename": fname, "imgid": idx,
                           "image_id": image_id, "split": split_of[image_id],
                           "sentids": [], "sentences": sents})
    sentid = 0
    for im in cap_images:
        for s in im["sentences"]:
            s["sentid"] = sentid
            im["sentids"].append(sentid)
            sentid += 1
    t_img = time.perf_counter() - t0
    atomic_write_text(os.path.join(out, "image_data.json"), _dump(image_data))
    atomic_write_text(os.path.join(out, "region_descriptions.json"), _dump(region_desc))
    atomic_write_text(os.path.join(out, "densecap_splits.json"), _dump(splits))
    atomic_write_text(os.path.join(out, "captions.json"),
                      _dump({"dataset": "synthetic", "images": cap_images}))
    total = time.perf_counter() - t0
    logger.info("generated %d images (%d regions) in %s in %.1f s", num_images, region_id, out, total)
    return {"images": num_images, "regions": region_id, "seconds": total, "seconds_images": t_img}


def prepare(out: str, max_tokens: int = 15, min_token_count: int = 1, verbose: bool = True) -> Dict:
    """Prepare the generated files of ``out`` into ``out/prepared``."""
    from .vg import prepare_vg

    return prepare_vg(
        region_descriptions=os.path.join(out, "region_descriptions.json"),
        image_data=os.path.join(out, "image_data.json"),
        splits=os.path.join(out, "densecap_splits.json"),
        image_dirs=[os.path.join(out, "images")],
        output=os.path.join(out, "prepared"),
        max_tokens=max_tokens,
        min_token_count=min_token_count,
        verbose=verbose,
    )


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m densecap.data.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="image side in pixels (>= 256 recommended)")
    p.add_argument("--prepare", action="store_true",
                   help="also prepare the files into OUT/prepared (min token count 1)")
    p.add_argument("--max-tokens", type=int, default=15)
    p.add_argument("--min-token-count", type=int, default=1)
    args = p.parse_args(argv)
    if args.num_images < 1:
        p.error("--num-images must be >= 1")
    if args.size < 128:
        p.error("--size must be >= 128")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    figs = generate(args.out, args.num_images, args.seed, args.size)
    print(f"wrote {figs['images']} images, {figs['regions']} regions to {args.out} "
          f"in {figs['seconds']:.1f} s")
    if args.prepare:
        prepare(args.out, args.max_tokens, args.min_token_count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
