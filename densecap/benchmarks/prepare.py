"""Benchmark "prepare": Visual Genome preparation at full size against the target (5 min, 3 GB).

    python tools/benchmark.py prepare [--images 108077] [--regions-per-image 50] [--workdir DIR]

Writes a full-size synthetic ``region_descriptions.json`` (VG v1.2 layout and key order, realistic
phrases with a Zipf vocabulary, capitals, punctuation, non-ASCII characters, and the data quirks:
zero-area, out-of-image, empty and over-long regions), ``image_data.json``, a split file with the
real proportions (77,398 / 5,000 / 5,000 of 108,077 images) and, unless
``--assume-images-exist``, a folder of empty placeholder ``<id>.jpg`` files (so the real folder
scan runs). Then it runs ``python -m densecap.data.vg`` in a child process and measures its wall
time and peak resident memory (``RUSAGE_CHILDREN.ru_maxrss``). The peer is the target: ratios are
``seconds / 300`` and ``peak_rss_gb / 3``; below 1 is within the target.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict

import numpy as np

TARGET_SECONDS = 300.0
TARGET_PEAK_GB = 3.0
VG_IMAGES = 108077
VG_SPLIT_FRACTIONS = (77398 / VG_IMAGES, 5000 / VG_IMAGES, 5000 / VG_IMAGES)

_COMMON = (
    "a the of on in with and is white black man shirt sign tree window wall grass sky building "
    "table blue green red wearing head hand woman person water car plate large small brown train "
    "light pole people street wooden two cloud clouds glass grey snow boy background front girl "
    "road field side chair leaves door dog cat hair ear eye tail jacket pants top bus picture "
    "in the sky behind near next to has are small yellow orange pink purple silver metal"
).split()


def _vocabulary(rng: np.random.Generator, size: int = 30000):
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = list(dict.fromkeys(_COMMON))
    seen = set(words)
    while len(words) < size:
        n = int(rng.integers(3, 10))
        w = "".join(letters[rng.integers(0, 26, size=n)])
        if w not in seen:
            seen.add(w)
            words.append(w)
    p = 1.0 / np.arange(1, len(words) + 1) ** 1.05
    return words, p / p.sum()


def generate_vg_files(out: str, images: int, regions_per_image: int, seed: int = 0,
                      placeholders: bool = True) -> Dict[str, int]:
    """Write a Visual-Genome-like dataset of the given size into ``out``; returns its size."""
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    words, p = _vocabulary(rng)
    words = np.array(words, dtype=object)
    length_p = np.array([2, 6, 14, 16, 14, 12, 9, 7, 5, 4, 3, 2, 1.5, 1.2, 1, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2])
    length_p /= length_p.sum()
    widths = rng.choice([500, 640, 800, 1024, 1280], size=images, p=[0.25, 0.1, 0.5, 0.1, 0.05])
    heights = (widths * rng.choice([0.75, 0.66, 1.0, 1.33], size=images, p=[0.6, 0.2, 0.1, 0.1])).astype(int)
    counts = rng.integers(max(1, regions_per_image // 2), regions_per_image * 3 // 2 + 1, size=images)
    n_regions = 0
    region_id = 0
    quirky = ["The man's hat.", "a café table", "½ of a pizza", "sign says \"STOP\"", "  ",
              "Tom\u2122 logo", "a 90\u00b0 angle", "crème brûlée", "..."]
    with open(os.path.join(out, "region_descriptions.json"), "w", encoding="utf-8") as f:
        f.write("[")
        batch = 500
        for b0 in range(0, images, batch):
            b1 = min(images, b0 + batch)
            nreg = int(counts[b0:b1].sum())
            lens = rng.choice(np.arange(1, len(length_p) + 1), size=nreg, p=length_p)
            toks = words[rng.choice(len(words), size=int(lens.sum()), p=p)]
            ends = np.cumsum(lens)
            starts = ends - lens
            u = rng.random((nreg, 4))
            special = rng.random(nreg)
            parts = []
            k = 0
            for i in range(b0, b1):
                W, H = int(widths[i]), int(heights[i])
                regs = []
                for _ in range(int(counts[i])):
                    region_id += 1
                    w = int(8 + u[k, 2] * 0.6 * W)
                    h = int(8 + u[k, 3] * 0.6 * H)
                    x = int(u[k, 0] * (W - w * 0.9))
                    y = int(u[k, 1] * (H - h * 0.9))
                    s = special[k]
                    if s < 0.004:
                        w = 0  # zero area
                    elif s < 0.006:
                        x = W + 5  # outside the image
                    phrase = " ".join(toks[starts[k]:ends[k]])
                    if 0.006 <= s < 0.016:
                        q = quirky[int(s * 1e4) % len(quirky)]
                        # blank and punctuation-only quirks replace the phrase: empty captions
                        q = q if not q.strip(" .") else q + " " + phrase
                        phrase = json.dumps(q)[1:-1]
                    regs.append(
                        f'{{"region_id": {region_id}, "width": {w}, "height": {h}, "image_id": {i + 1}, '
                        f'"phrase": "{phrase}", "y": {y}, "x": {x}}}'
                    )
                    k += 1
                parts.append(f'{{"regions": [{", ".join(regs)}], "id": {i + 1}}}')
            n_regions += k
            f.write(("" if b0 == 0 else ", ") + ", ".join(parts))
        f.write("]")
    with open(os.path.join(out, "image_data.json"), "w", encoding="utf-8") as f:
        json.dump([{"width": int(widths[i]), "url": f"https://example.invalid/{i + 1}.jpg",
                    "height": int(heights[i]), "image_id": i + 1, "coco_id": None, "flickr_id": None}
                   for i in range(images)], f)
    order = rng.permutation(images) + 1
    n_tr = int(round(VG_SPLIT_FRACTIONS[0] * images))
    n_va = max(1, int(round(VG_SPLIT_FRACTIONS[1] * images)))
    splits = {"train": sorted(int(i) for i in order[:n_tr]),
              "val": sorted(int(i) for i in order[n_tr:n_tr + n_va]),
              "test": sorted(int(i) for i in order[n_tr + n_va:n_tr + 2 * n_va])}
    with open(os.path.join(out, "densecap_splits.json"), "w", encoding="utf-8") as f:
        json.dump(splits, f)
    img_dir = os.path.join(out, "images")
    os.makedirs(img_dir, exist_ok=True)
    if placeholders:
        for i in range(1, images + 1):
            open(os.path.join(img_dir, f"{i}.jpg"), "wb").close()
    return {"images": images, "regions": n_regions,
            "bytes": os.path.getsize(os.path.join(out, "region_descriptions.json"))}


def add_arguments(parser) -> None:
    parser.add_argument("--images", type=int, default=VG_IMAGES)
    parser.add_argument("--regions-per-image", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="",
                        help="keep the generated files here and reuse them (default: a temp dir, removed)")
    parser.add_argument("--assume-images-exist", action="store_true",
                        help="no placeholder image files; the preparation skips the folder scan")


def run(args) -> Dict:
    tmp = None
    work = args.workdir
    if not work:
        tmp = tempfile.mkdtemp(prefix="densecap_prepare_bench_")
        work = tmp
    try:
        marker = os.path.join(work, "generated.json")
        params = {"images": args.images, "regions_per_image": args.regions_per_image,
                  "seed": args.seed, "placeholders": not args.assume_images_exist}
        info = None
        if os.path.exists(marker):
            with open(marker) as f:
                m = json.load(f)
            if m.get("params") == params:
                info = m["info"]
        t0 = time.perf_counter()
        if info is None:
            info = generate_vg_files(work, args.images, args.regions_per_image, args.seed,
                                     placeholders=not args.assume_images_exist)
            with open(marker, "w") as f:
                json.dump({"params": params, "info": info}, f)
        gen_s = time.perf_counter() - t0
        print(f"input: {info['images']} images, {info['regions']} regions, "
              f"{info['bytes'] / 1e6:.0f} MB region_descriptions.json (generated in {gen_s:.0f} s)",
              flush=True)
        out = os.path.join(work, "prepared")
        cmd = [sys.executable, "-m", "densecap.data.vg",
               "--region-descriptions", os.path.join(work, "region_descriptions.json"),
               "--image-data", os.path.join(work, "image_data.json"),
               "--splits", os.path.join(work, "densecap_splits.json"),
               "--image-dirs", os.path.join(work, "images"),
               "--output", out]
        if args.assume_images_exist:
            cmd.append("--assume-images-exist")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"preparation failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # KB on Linux
        with open(os.path.join(out, "report.json")) as f:
            report = json.load(f)
        kept = sum(report["regions_kept"].values())
        figures = {
            "seconds": round(seconds, 2),
            "peak_rss_gb": round(peak_gb, 3),
            "ratio": round(seconds / TARGET_SECONDS, 4),
            "rss_ratio": round(peak_gb / TARGET_PEAK_GB, 4),
            "target_seconds": TARGET_SECONDS,
            "target_peak_rss_gb": TARGET_PEAK_GB,
            "images": info["images"],
            "regions": info["regions"],
            "input_mb": round(info["bytes"] / 1e6, 1),
            "regions_kept": kept,
            "regions_per_second": round(info["regions"] / max(seconds, 1e-9)),
        }
        rows = [("", "measured", "target", "ratio"),
                ("wall seconds", f"{seconds:.1f}", f"{TARGET_SECONDS:.0f}", f"{figures['ratio']:.3f}"),
                ("peak RSS GB", f"{peak_gb:.2f}", f"{TARGET_PEAK_GB:.0f}", f"{figures['rss_ratio']:.3f}")]
        print(f"\nprepare: {info['regions']} regions in {info['images']} images, {kept} kept")
        for r in rows:
            print(f"{r[0]:<14}{r[1]:>10}{r[2]:>10}{r[3]:>10}")
        return figures
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
