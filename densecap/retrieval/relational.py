"""Relational region search: does a query naming two objects and their relation find *the* region?

``tools/retrieve.py eval-relational --weights CKPT --data PREPARED_DIR [--split test]``

Protocol (on a prepared split, all its images by default):

1. The pool: every image's best ``boxes_per_image`` (100) boxes with their region codes, as in
   :func:`densecap.retrieval.evaluate.evaluate_retrieval`.
2. Queries: every ground-truth region whose caption names a relation ("a red star left of a green
   square") and is unique to its image in the split: no region of another image has that caption,
   in either object order (:func:`densecap.data.relations.canonical_relation`). The query text is
   the caption as annotated; its target is the annotated box. ``num_queries > 0`` samples that many
   (seeded).
3. Every query is ranked against every region of the pool: ``exact``, the language model's
   log-likelihood of the query given the region code; ``fast``, the ``candidates`` regions nearest
   in the joint embedding, re-ranked by that log-likelihood (the query tool's two modes).
4. A query is a hit at k when one of its top-k regions lies in the source image with IoU >= 0.5
   with the annotated box. Reported: hit@1/5/10, and ``image@10`` (a region of the source image in
   the top 10, whatever its box).

Shapes: R: regions of the pool, Q: queries, U: distinct query captions.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Dict, List, Sequence

import numpy as np

from densecap.data.prepared import load_split, load_vocab
from densecap.data.relations import canonical_relation, split_relation
from densecap.structures.boxes import iou_xyxy_np, xywh_to_xyxy

from .evaluate import _detect

logger = logging.getLogger(__name__)

__all__ = ["relational_queries", "relational_hits", "evaluate_relational_retrieval", "format_relational"]

HIT_KS = (1, 5, 10)


def relational_queries(captions_per_image: Sequence[Sequence[str]]) -> List[tuple]:
    """(image position, region position, caption) of every relational caption unique to its image
    (up to the object order)."""
    images_of = defaultdict(set)
    for j, caps in enumerate(captions_per_image):
        for c in caps:
            if split_relation(c) is not None:
                images_of[canonical_relation(c)].add(j)
    out, seen = [], set()
    for j, caps in enumerate(captions_per_image):
        for k, c in enumerate(caps):
            if split_relation(c) is None or len(images_of[canonical_relation(c)]) != 1 or (j, c) in seen:
                continue
            seen.add((j, c))
            out.append((j, k, c))
    return out


def relational_hits(ranked: np.ndarray, region_image: np.ndarray, region_boxes: np.ndarray, source: int,
                    gt_box: np.ndarray, iou_threshold: float = 0.5) -> Dict[str, bool]:
    """Hits of one query. ranked: region ids best first (at least max(HIT_KS)); region_image (R,)
    image position of each region; region_boxes (R, 4) and gt_box (4,) [x, y, w, h]."""
    top = ranked[: max(HIT_KS)]
    in_img = region_image[top] == source
    iou = iou_xyxy_np(xywh_to_xyxy(region_boxes[top].astype(np.float64)), xywh_to_xyxy(gt_box[None].astype(np.float64)))[:, 0]
    ok = in_img & (iou >= iou_threshold)
    out = {f"hit@{k}": bool(ok[:k].any()) for k in HIT_KS}
    out["image@10"] = bool(in_img[:10].any())
    return out


def _summarise(rows: List[Dict[str, bool]]) -> Dict[str, float]:
    keys = [f"hit@{k}" for k in HIT_KS] + ["image@10"]
    return {k: float(np.mean([r[k] for r in rows])) if rows else 0.0 for k in keys}


def evaluate_relational_retrieval(
    rmodel,
    prepared_dir: str,
    split: str = "test",
    *,
    num_images: int = 0,
    num_queries: int = 0,
    boxes_per_image: int = 100,
    candidates: Sequence[int] = (1000, 100),
    seed: int = 0,
    batch_size: int = 4,
) -> Dict[str, Any]:
    """Run the protocol (module docstring) with a :class:`~densecap.retrieval.search.RetrievalModel`."""
    t0 = time.perf_counter()
    data = load_split(prepared_dir, split)
    vocab = load_vocab(prepared_dir)
    rng = np.random.default_rng(seed)
    n_img = min(int(num_images), len(data)) if num_images > 0 else len(data)
    pool = np.sort(rng.choice(len(data), n_img, replace=False)) if n_img < len(data) else np.arange(len(data))

    from .search import codes_only

    boxes, codes, counts = [], [], []
    with codes_only(rmodel.model):
        _detect(rmodel, data, pool, batch_size, boxes_per_image, boxes, codes, counts)
    counts = np.asarray(counts, np.int64)
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)  # R 4
    codes = np.concatenate(codes) if codes else np.zeros((0, rmodel.region_dim), np.float32)  # R D
    region_image = np.repeat(np.arange(n_img), counts)  # R
    t_detect = time.perf_counter() - t0

    caps = [data.caption_strings(int(i), vocab) for i in pool]
    queries = relational_queries(caps)
    if num_queries > 0 and len(queries) > num_queries:
        queries = [queries[q] for q in sorted(rng.choice(len(queries), num_queries, replace=False))]
    uniq = sorted({c for _, _, c in queries})
    u_index = {c: i for i, c in enumerate(uniq)}
    results: Dict[str, Any] = {
        "split": split, "prepared_dir": prepared_dir, "num_images": int(n_img), "num_queries": len(queries),
        "num_regions": int(len(codes)), "boxes_per_image": int(boxes_per_image), "seed": int(seed),
    }
    if not queries or not len(codes):
        logger.warning("relational retrieval: %d queries, %d regions: nothing to evaluate", len(queries), len(codes))
        return results
    gt = [data.boxes[data.regions(int(pool[j]))][k] for j, k, _ in queries]
    ids = rmodel.encode_captions(uniq)  # U T
    t1 = time.perf_counter()
    ll = rmodel.score_captions(codes, ids)  # U R
    t_exact = time.perf_counter() - t1
    K = max(HIT_KS)

    def run(score_rows: np.ndarray) -> Dict[str, float]:
        rows = []
        for (j, _, c), g in zip(queries, gt):
            s = score_rows[u_index[c]]
            ranked = np.argsort(-s, kind="stable")[:K]
            ranked = ranked[np.isfinite(s[ranked])]
            if len(ranked) < K:  # fewer scored regions than K (fast mode with few candidates)
                ranked = np.concatenate([ranked, np.full(K - len(ranked), -1)])
            rows.append(relational_hits(ranked, np.append(region_image, -1), np.vstack([boxes, np.zeros((1, 4))]),
                                        j, np.asarray(g)))
        return _summarise(rows)

    results["exact"] = run(ll)
    if rmodel.embedding_head is not None:
        sims = rmodel.embed_sentences(ids) @ rmodel.embed_regions(codes).T  # U R
        for c in candidates:
            k_c = min(int(c), len(codes))
            cand = np.argpartition(-sims, k_c - 1, axis=1)[:, :k_c]  # U K
            masked = np.full_like(ll, -np.inf)
            np.put_along_axis(masked, cand, np.take_along_axis(ll, cand, axis=1), axis=1)
            results[f"fast_{int(c)}"] = {**run(masked), "candidates": int(k_c)}
    else:
        logger.info("the model has no joint embedding head: fast mode not evaluated")
    results["examples"] = [q[2] for q in queries[:5]]
    results["seconds"] = {"detect": t_detect, "exact_scoring": t_exact, "total": time.perf_counter() - t0}
    return results


def format_relational(m: Dict[str, Any]) -> str:
    lines = [f"relational region search on {m['split']}: {m['num_queries']} queries, {m['num_images']} images, "
             f"{m['num_regions']} regions (hit = IoU >= 0.5 with the annotated box)"]
    for mode in [k for k in m if k == "exact" or k.startswith("fast_")]:
        r = m[mode]
        lines.append(f"  {mode:10s} hit@1 {r['hit@1']:.3f}  hit@5 {r['hit@5']:.3f}  hit@10 {r['hit@10']:.3f}  "
                     f"image@10 {r['image@10']:.3f}")
    return "\n".join(lines)
