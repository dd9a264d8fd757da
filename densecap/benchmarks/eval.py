"""Benchmark task ``eval``: the full DenseCap evaluation at the size of the VG test split.

Generates ``--images`` images (default 5,000, the VG test split) with about ``--gt-per-image``
(default 50) GT regions carrying short Visual-Genome-like phrases (a quarter of them near-duplicate
boxes, so GT merging has work to do), and ``--preds-per-image`` (default 100, the original's
density) predictions: about 45 % jittered GT boxes, the rest anywhere, with captions drawn from a
Zipf-distributed pool of plausible phrases (real outputs repeat a lot) or a perturbed GT phrase.
Both are written as a VG ``region_descriptions.json`` and a ``results.json``; the timed part is
:func:`densecap.evaluation.evaluate_dense_files` = reading both files, tokenising the GT, merging,
matching, real METEOR 1.5 (JVM start included) and the 35 APs — what ``tools/evaluate.py`` does.

The peer is the target: at most 15 minutes on a 2-core CPU machine, so
``ratio = seconds / 900`` (below 1 is within target).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Dict, List

import numpy as np

logger = logging.getLogger(__name__)

TARGET_SECONDS = 900.0

_NOUNS = (
    "man woman boy girl person people child dog cat horse cow sheep elephant giraffe zebra bird "
    "tree trees grass sky cloud clouds building window windows door wall floor ceiling roof street "
    "road sidewalk car truck bus train bike motorcycle sign pole light lamp fence table chair bench "
    "plate bowl cup glass bottle food pizza sandwich cake shirt jacket hat cap pants jeans shoes "
    "hair head face hand arm leg ear eye nose mouth water ocean wave beach sand snow mountain hill "
    "field rock umbrella bag kite board skateboard surfboard boat shadow leaves branch flower "
    "pillow bed blanket picture frame clock tower curtain shelf counter sink mirror toilet phone "
    "laptop screen keyboard book paper box ball racket bat helmet glove tail wheel tire line"
).split()
_ADJS = (
    "white black red blue green yellow brown gray orange pink purple large small big tall short "
    "wooden metal glass open closed dark bright clear cloudy blue green striped plaid long old "
    "young parked empty full round square silver"
).split()
_VERBS = "wearing holding riding on in near behind under has of with beside above".split()


def _phrase(rng: np.random.Generator) -> str:
    n = lambda: _NOUNS[rng.integers(len(_NOUNS))]  # noqa: E731
    a = lambda: _ADJS[rng.integers(len(_ADJS))]  # noqa: E731
    v = lambda: _VERBS[rng.integers(len(_VERBS))]  # noqa: E731
    k = rng.integers(8)
    if k == 0:
        return f"{a()} {n()}"
    if k == 1:
        return f"a {a()} {n()}"
    if k == 2:
        return f"{n()} {v()} {n()}"
    if k == 3:
        return f"the {n()} is {a()}"
    if k == 4:
        return f"{a()} {n()} {v()} the {n()}"
    if k == 5:
        return f"{n()} of the {n()}"
    if k == 6:
        return f"a {n()} {v()} a {a()} {n()}"
    return f"{a()} {n()} on {a()} {n()}"


def _perturb(rng: np.random.Generator, phrase: str) -> str:
    words = phrase.split()
    r = rng.random()
    if r < 0.4:
        return phrase
    i = int(rng.integers(len(words)))
    if r < 0.7:
        words[i] = _ADJS[rng.integers(len(_ADJS))]
    elif r < 0.9:
        words[i] = _NOUNS[rng.integers(len(_NOUNS))]
    else:
        words = ["a"] + words
    return " ".join(words)


def _jitter(rng: np.random.Generator, box: np.ndarray, scale: float) -> np.ndarray:
    x, y, w, h = box
    dx, dy = rng.normal(0, scale, 2) * np.array([w, h])
    sw, sh = np.exp(rng.normal(0, scale, 2))
    return np.array([x + dx, y + dy, max(w * sw, 1.0), max(h * sh, 1.0)])


def generate(
    num_images: int, preds_per_image: int, gt_per_image: int, seed: int = 0, pool_size: int = 4000
) -> (List[Dict], Dict):
    """(VG region_descriptions entries, results.json dict). Boxes [x, y, w, h] original pixels."""
    rng = np.random.default_rng(seed)
    pool = [_phrase(rng) for _ in range(pool_size)]
    zipf = 1.0 / np.arange(1, pool_size + 1) ** 1.1
    zipf /= zipf.sum()
    regions_json: List[Dict] = []
    results: List[Dict] = []
    rid = 0
    for img in range(num_images):
        image_id = 1_000_000 + img
        W, H = int(rng.integers(500, 1025)), int(rng.integers(400, 1025))
        n_gt = max(1, int(rng.normal(gt_per_image, gt_per_image * 0.25)))
        boxes = []
        phrases = []
        for r in range(n_gt):
            if boxes and rng.random() < 0.25:  # near-duplicate annotation of an earlier region
                b = _jitter(rng, boxes[int(rng.integers(len(boxes)))], 0.05)
            else:
                w = float(np.exp(rng.uniform(np.log(16), np.log(W * 0.9))))
                h = float(np.exp(rng.uniform(np.log(16), np.log(H * 0.9))))
                b = np.array([rng.uniform(0, W - w), rng.uniform(0, H - h), w, h])
            boxes.append(b)
            phrases.append(_phrase(rng) if rng.random() < 0.8 else pool[int(rng.choice(pool_size, p=zipf))])
        regions = []
        for b, p in zip(boxes, phrases):
            x, y, w, h = (int(round(v)) for v in b)
            regions.append({"region_id": rid, "image_id": image_id, "x": x, "y": y, "width": max(w, 1),
                            "height": max(h, 1), "phrase": p.capitalize() + ("." if rng.random() < 0.3 else "")})
            rid += 1
        regions_json.append({"id": image_id, "regions": regions})
        pb, pc = [], []
        pool_draw = rng.choice(pool_size, size=preds_per_image, p=zipf)
        for k in range(preds_per_image):
            if rng.random() < 0.45:
                g = int(rng.integers(n_gt))
                b = _jitter(rng, boxes[g], 0.2)
                cap = _perturb(rng, phrases[g].lower()) if rng.random() < 0.35 else pool[int(pool_draw[k])]
            else:
                w = float(np.exp(rng.uniform(np.log(16), np.log(W * 0.9))))
                h = float(np.exp(rng.uniform(np.log(16), np.log(H * 0.9))))
                b = np.array([rng.uniform(0, W - w), rng.uniform(0, H - h), w, h])
                cap = pool[int(pool_draw[k])]
            pb.append([round(float(v), 2) for v in b])
            pc.append(cap)
        scores = np.sort(rng.random(preds_per_image))[::-1]
        results.append({"image_id": image_id, "boxes": pb, "scores": [round(float(s), 6) for s in scores],
                        "captions": pc})
    return regions_json, {"results": results}


def add_arguments(parser) -> None:
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--preds-per-image", type=int, default=100)
    parser.add_argument("--gt-per-image", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="", help="where to write the generated files (default: a temp dir)")
    parser.add_argument("--score-all", action="store_true",
                        help="worst case: METEOR-score every record with references, also those that "
                             "cannot be true positives (same APs, more METEOR work)")


def run(args) -> Dict:
    from densecap.evaluation.densecap_eval import evaluate_dense_files

    t0 = time.perf_counter()
    gt, pred = generate(args.images, args.preds_per_image, args.gt_per_image, args.seed)
    t_gen = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(dir=args.workdir or None) as d:
        gt_path, pred_path = os.path.join(d, "region_descriptions.json"), os.path.join(d, "results.json")
        with open(gt_path, "w") as f:
            json.dump(gt, f)
        with open(pred_path, "w") as f:
            json.dump(pred, f)
        del gt, pred
        logger.info("generated %d images in %.1f s; evaluating", args.images, t_gen)
        t1 = time.perf_counter()
        res = evaluate_dense_files(gt_path, pred_path, score_all_records=args.score_all)
        seconds = time.perf_counter() - t1
    timing = res["timing"]
    figures = {
        "task": "eval",
        "images": args.images,
        "preds_per_image": args.preds_per_image,
        "gt_regions": res["num_gt_regions"],
        "npos": res["npos"],
        "predictions": res["num_predictions"],
        "meteor_pairs": res["num_meteor_pairs"],
        "score_all_records": bool(args.score_all),
        "seconds": round(seconds, 2),
        "seconds_read": round(timing["read"], 2),
        "seconds_match": round(timing["match"], 2),
        "seconds_meteor": round(timing["meteor"], 2),
        "seconds_ap": round(timing["ap"], 2),
        "peer": "target: 15 minutes (900 s) on this 2-core machine",
        "peer_seconds": TARGET_SECONDS,
        "ratio": round(seconds / TARGET_SECONDS, 4),
        "map": round(res["map"], 3),
        "detmap": round(res["detmap"], 3),
    }
    print(
        f"eval benchmark: {args.images} images x {args.preds_per_image} predictions, "
        f"{res['num_meteor_pairs']} METEOR pairs: {seconds:.1f} s "
        f"(read {timing['read']:.1f}, match {timing['match']:.1f}, METEOR {timing['meteor']:.1f}, "
        f"AP {timing['ap']:.1f}); target 900 s -> ratio {seconds / TARGET_SECONDS:.3f}"
    )
    return figures
