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
   ``pairs_exact`` / ``pairs_fast_N``: the query grounded as a pair of regions
   (:mod:`densecap.retrieval.pairs`), its two phrases scored over every region or over their
   embedding's candidates (with the regions' generated captions, so the pool is captioned), the relation by a
   geometry model fitted on the ``geometry_split`` (train) annotations; the answers are the pairs'
   union boxes. ``pairs_exact_no_geometry`` drops the relation term (an ablation).
4. A query is a hit at k when one of its top-k regions (boxes) lies in the source image with IoU
   >= 0.5 with the annotated box. Reported: hit@1/5/10, and ``image@10`` (a region of the source
   image in the top 10, whatever its box).

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


def box_hits(images: np.ndarray, boxes: np.ndarray, source: int, gt_box: np.ndarray,
             iou_threshold: float = 0.5) -> Dict[str, bool]:
    """Hits of one query answered by boxes: images (k,) image position of each answer, best first
    (-1: no answer), boxes (k, 4) and gt_box (4,) [x, y, w, h]."""
    k = max(HIT_KS)
    images = np.asarray(images, np.int64)[:k]
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)[:k]
    if len(images) < k:
        images = np.concatenate([images, np.full(k - len(images), -1)])
        boxes = np.vstack([boxes, np.zeros((k - len(boxes), 4))])
    return relational_hits(np.arange(k), images, boxes, source, gt_box, iou_threshold)


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
    pairs: bool = True,
    geometry=None,
    geometry_split: str = "train",
) -> Dict[str, Any]:
    """Run the protocol (module docstring) with a :class:`~densecap.retrieval.search.RetrievalModel`.

    ``geometry``: a :class:`~densecap.retrieval.pairs.RelationGeometry` for the pair modes; None
    fits one on ``geometry_split`` of the same prepared directory."""
    t0 = time.perf_counter()
    data = load_split(prepared_dir, split)
    vocab = load_vocab(prepared_dir)
    rng = np.random.default_rng(seed)
    n_img = min(int(num_images), len(data)) if num_images > 0 else len(data)
    pool = np.sort(rng.choice(len(data), n_img, replace=False)) if n_img < len(data) else np.arange(len(data))

    from .search import codes_only

    boxes, codes, counts, region_caps = [], [], [], []
    if pairs:  # the pair modes score phrases with the regions' own captions
        _detect(rmodel, data, pool, batch_size, boxes_per_image, boxes, codes, counts, region_caps)
    else:
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
    if pairs:
        results.update(_pair_modes(rmodel, queries, gt, boxes, codes, region_caps, region_image, candidates,
                                   geometry, prepared_dir, geometry_split, vocab))
    results["examples"] = [q[2] for q in queries[:5]]
    results["seconds"] = {"detect": t_detect, "exact_scoring": t_exact, "total": time.perf_counter() - t0}
    return results


def _pair_modes(rmodel, queries, gt, boxes, codes, region_caps, region_image, candidates, geometry, prepared_dir,
                geometry_split, vocab) -> Dict[str, Any]:
    from .pairs import RelationGeometry, ground_pairs, parse_relational, score_phrase, split_triples

    t0 = time.perf_counter()
    if geometry is None:
        geometry = RelationGeometry.fit(split_triples(load_split(prepared_dir, geometry_split), vocab))
    out: Dict[str, Any] = {"geometry": {"relations": geometry.relations, "num_triples": geometry.num_triples,
                                        "train_accuracy": geometry.train_accuracy, "split": geometry_split}}
    parsed = [parse_relational(c) for _, _, c in queries]
    phrases = sorted({p for t in parsed for p in (t[0], t[2])})
    p_index = {c: i for i, c in enumerate(phrases)}
    ll = np.stack([score_phrase(rmodel, codes, region_caps, ph) for ph in phrases])  # Ph R
    t_score = time.perf_counter() - t0
    all_ids = np.arange(len(codes))
    stages = {"exact": None}
    if rmodel.embedding_head is not None:
        sims = rmodel.embed_sentences(rmodel.encode_captions(phrases)) @ rmodel.embed_regions(codes).T  # Ph R
        for c in candidates:
            k_c = min(int(c), len(codes))
            stages[f"fast_{int(c)}"] = np.sort(np.argpartition(-sims, k_c - 1, axis=1)[:, :k_c], axis=1)  # Ph K

    def run(cand, geo) -> Dict[str, float]:
        rows = []
        for (j, _, _), g, (subj, rel, obj) in zip(queries, gt, parsed):
            ps, po = p_index[subj], p_index[obj]
            s_ids = all_ids if cand is None else cand[ps]
            o_ids = all_ids if cand is None else cand[po]
            hits = ground_pairs(s_ids, ll[ps, s_ids], o_ids, ll[po, o_ids], boxes, region_image, rel, geo,
                                topk=max(HIT_KS))
            rows.append(box_hits([h.image for h in hits], np.array([h.box for h in hits]).reshape(-1, 4), j, np.asarray(g)))
        return _summarise(rows)

    for name, cand in stages.items():
        out[f"pairs_{name}"] = run(cand, geometry)
        if cand is not None:
            out[f"pairs_{name}"]["candidates"] = int(cand.shape[1])
    out["pairs_exact_no_geometry"] = run(None, None)
    out["pairs_seconds"] = {"phrase_scoring": t_score, "total": time.perf_counter() - t0}
    return out


def format_relational(m: Dict[str, Any]) -> str:
    lines = [f"relational region search on {m['split']}: {m['num_queries']} queries, {m['num_images']} images, "
             f"{m['num_regions']} regions (hit = IoU >= 0.5 with the annotated box)"]
    for mode in [k for k in m if k == "exact" or k.startswith("fast_") or (k.startswith("pairs_") and "hit@1" in m[k])]:
        r = m[mode]
        lines.append(f"  {mode:24s} hit@1 {r['hit@1']:.3f}  hit@5 {r['hit@5']:.3f}  hit@10 {r['hit@10']:.3f}  "
                     f"image@10 {r['image@10']:.3f}")
    return "\n".join(lines)
