"""The DenseCap paper's retrieval protocol (Johnson et al. 2016, sec. 4.3), on a prepared split.

J: images in the pool, R: their regions (top boxes), Q: queries, C: captions per query,
U: distinct query captions, K: fast-mode candidates per caption.

Protocol (seeded):

1. ``num_images`` random images of the split (all if fewer): the model proposes boxes; each image
   keeps its best ``boxes_per_image`` (100) with their region codes.
2. ``num_queries`` random source images (with at least one GT region); a query is
   ``captions_per_query`` (4) GT captions sampled from that image (without replacement when it has
   enough regions), each with its GT box.
3. ``exact`` (the paper): every query caption is scored against every box by the language model's
   log-likelihood; in each image the caption is aligned to its best box; an image's score is the
   mean log-likelihood of its aligned (caption, box) pairs; images are ranked by that score.
4. ``fast``: per caption only the ``candidates`` regions nearest in the joint embedding are scored
   by the LM (the query tool's fast mode); in each image a caption aligns to its best candidate box.
   Images are ranked by how many of the query's captions found a candidate box in them, then by the
   mean log-likelihood of those aligned pairs.
5. Metrics: R@1, R@5, R@10 and the median rank of the source image (ties broken at random in
   expectation: rank = 1 + better + ties/2), and the fraction of the captions whose box aligned in the
   source image has IoU > 0.1 / 0.3 / 0.5 with the caption's GT box. A random baseline ranks the
   images at random and aligns each caption to a random one of the source image's boxes.
6. ``fast_vs_exact``: per caption, the fraction of exact mode's top-k regions (over the whole pool)
   that fast mode returns in its top k, for k = 10 and 100.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from densecap.data.prepared import load_split, load_vocab
from densecap.structures.boxes import iou_xyxy_np, xywh_to_xyxy

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10)
IOU_THRESHOLDS = (0.1, 0.3, 0.5)

__all__ = ["evaluate_retrieval", "source_ranks", "ranking_metrics", "iou_fractions", "format_metrics"]


# ------------------------------------------------------------------------------------------
# pure metric functions
# ------------------------------------------------------------------------------------------
def source_ranks(scores: np.ndarray, source: np.ndarray) -> np.ndarray:
    """1-based rank of each query's source image. scores (Q, J), higher is better (-inf allowed);
    source (Q,) column indices. Ties count half: rank = 1 + #better + #tied_others / 2."""
    scores = np.asarray(scores, np.float64)
    q = np.arange(len(source))
    s = scores[q, source][:, None]  # Q 1
    better = (scores > s).sum(axis=1)
    ties = (scores == s).sum(axis=1) - 1
    return 1.0 + better + ties / 2.0


def source_ranks_lex(primary: np.ndarray, secondary: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Like :func:`source_ranks` for a lexicographic key (primary, then secondary), both (Q, J)."""
    q = np.arange(len(source))
    p, s = primary[q, source][:, None], secondary[q, source][:, None]
    better = (primary > p) | ((primary == p) & (secondary > s))
    ties = (primary == p) & (secondary == s)
    return 1.0 + better.sum(axis=1) + (ties.sum(axis=1) - 1) / 2.0


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
    """R@k (fraction of queries whose source ranks <= k) and the median rank."""
    ranks = np.asarray(ranks, np.float64)
    out = {f"R@{k}": float((ranks <= k).mean()) if len(ranks) else 0.0 for k in ks}
    out["median_rank"] = float(np.median(ranks)) if len(ranks) else 0.0
    return out


def iou_fractions(ious: np.ndarray, thresholds: Sequence[float] = IOU_THRESHOLDS) -> Dict[str, float]:
    ious = np.asarray(ious, np.float64)
    return {f"IoU>{t:g}": float((ious > t).mean()) if len(ious) else 0.0 for t in thresholds}


def _best_per_image(values: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """values (U, R) with regions grouped by image -> (max (U, J), argmax region id (U, J));
    -inf / -1 for images without regions."""
    u = values.shape[0]
    j = len(starts)
    best = np.full((u, j), -np.inf)
    arg = np.full((u, j), -1, np.int64)
    nz = np.nonzero(counts > 0)[0]
    if len(nz):
        best[:, nz] = np.maximum.reduceat(values, starts[nz], axis=1)
        for jj in nz:  # argmax per image (J small: <= 1000)
            a = int(starts[jj])
            arg[:, jj] = a + np.argmax(values[:, a : a + int(counts[jj])], axis=1)
    return best, arg


# ------------------------------------------------------------------------------------------
# the protocol
# ------------------------------------------------------------------------------------------
def _detect(rmodel, data, pool, batch_size, boxes_per_image, boxes, codes, counts, captions=None) -> None:
    """Append each pool image's best boxes, region codes, their count (and captions when a list is
    given) to the lists."""
    from densecap.data.image_io import ImageReadError

    for a in range(0, len(pool), batch_size):
        idx = pool[a : a + batch_size]
        preds = rmodel.predictor.predict_paths([data.path(int(i)) for i in idx])
        for i, p in zip(idx, preds):
            if isinstance(p, ImageReadError):
                logger.warning("retrieval eval: %s (the image stays in the pool with no boxes)", p)
                counts.append(0)
                continue
            n = min(int(boxes_per_image), len(p.captions))
            boxes.append(np.asarray(p.boxes[:n], np.float32).reshape(n, 4))
            codes.append(np.asarray(p.region_codes[:n], np.float32).reshape(n, -1))
            counts.append(n)
            if captions is not None:
                captions.extend(str(c) for c in p.captions[:n])


def evaluate_retrieval(
    rmodel,
    prepared_dir: str,
    split: str = "test",
    *,
    num_images: int = 1000,
    num_queries: int = 100,
    captions_per_query: int = 4,
    boxes_per_image: int = 100,
    candidates: int = 1000,
    seed: int = 0,
    batch_size: int = 4,
) -> Dict[str, Any]:
    """Run the protocol (module docstring) with a :class:`~densecap.retrieval.search.RetrievalModel`."""
    t0 = time.perf_counter()
    data = load_split(prepared_dir, split)
    data_vocab = load_vocab(prepared_dir)
    rng = np.random.default_rng(seed)
    n_img = min(int(num_images), len(data)) if num_images > 0 else len(data)
    pool = np.sort(rng.choice(len(data), n_img, replace=False))

    # 1. boxes and region codes of the pool (generated captions are not needed: one-token decoding)
    from .search import codes_only

    boxes, codes, counts = [], [], []
    with codes_only(rmodel.model):
        _detect(rmodel, data, pool, batch_size, boxes_per_image, boxes, codes, counts)
    counts = np.asarray(counts, np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)  # R 4
    codes = np.concatenate(codes) if codes else np.zeros((0, rmodel.region_dim), np.float32)  # R D
    t_detect = time.perf_counter() - t0

    # 2. queries
    has_gt = np.array([data.regions(int(i)).stop > data.regions(int(i)).start for i in pool])
    eligible = np.nonzero(has_gt)[0]
    n_q = min(int(num_queries), len(eligible))
    sources = rng.choice(eligible, n_q, replace=False) if n_q else np.zeros(0, np.int64)  # pool positions
    q_captions: List[List[str]] = []
    q_gt_boxes: List[np.ndarray] = []
    for s in sources:
        sl = data.regions(int(pool[s]))
        caps = data.caption_strings(int(pool[s]), data_vocab)
        n = len(caps)
        pick = rng.choice(n, captions_per_query, replace=n < captions_per_query)
        q_captions.append([caps[k] for k in pick])
        q_gt_boxes.append(data.boxes[sl][pick].astype(np.float64))
    uniq = sorted({c for cs in q_captions for c in cs})
    u_index = {c: i for i, c in enumerate(uniq)}
    cap_ids = rmodel.encode_captions(uniq)  # U T

    # 3. exact: log-likelihood of every caption with every region
    t1 = time.perf_counter()
    ll = rmodel.score_captions(codes, cap_ids) if len(uniq) else np.zeros((0, len(codes)), np.float32)  # U R
    t_exact = time.perf_counter() - t1
    best, arg = _best_per_image(ll, starts, counts)  # U J

    def query_eval(best_ul, arg_ul, count_ul=None):
        scores = np.zeros((n_q, n_img))
        ious = []
        primary = np.zeros((n_q, n_img))
        for qi, (caps, gtb) in enumerate(zip(q_captions, q_gt_boxes)):
            us = [u_index[c] for c in caps]
            b = best_ul[us]  # C J
            if count_ul is None:
                scores[qi] = b.mean(axis=0)
            else:
                found = np.isfinite(b)
                primary[qi] = found.sum(axis=0)
                scores[qi] = np.where(found, b, 0).sum(axis=0) / np.maximum(found.sum(axis=0), 1)
                scores[qi][found.sum(axis=0) == 0] = -np.inf
            for k, u in enumerate(us):
                r = arg_ul[u, sources[qi]]
                ious.append(0.0 if r < 0 else float(iou_xyxy_np(xywh_to_xyxy(boxes[r : r + 1].astype(np.float64)),
                                                                xywh_to_xyxy(gtb[k : k + 1]))[0, 0]))
        ranks = source_ranks(scores, sources) if count_ul is None else source_ranks_lex(primary, scores, sources)
        return {**ranking_metrics(ranks), **iou_fractions(ious), "ranks": ranks.tolist()}

    results: Dict[str, Any] = {
        "split": split,
        "prepared_dir": prepared_dir,
        "num_images": int(n_img),
        "num_queries": int(n_q),
        "captions_per_query": int(captions_per_query),
        "distinct_captions": len(uniq),
        "num_regions": int(len(codes)),
        "boxes_per_image": int(boxes_per_image),
        "seed": int(seed),
        "exact": query_eval(best, arg),
    }

    # 4. fast: embedding candidates, exact re-ranking (values taken from the LL matrix: the same numbers)
    if rmodel.embedding_head is not None and len(codes):
        t2 = time.perf_counter()
        sims = rmodel.embed_sentences(cap_ids) @ rmodel.embed_regions(codes).T  # U R
        k_c = min(int(candidates), len(codes))
        cand = np.argpartition(-sims, k_c - 1, axis=1)[:, :k_c]  # U K
        masked = np.full_like(ll, -np.inf)
        np.put_along_axis(masked, cand, np.take_along_axis(ll, cand, axis=1), axis=1)
        t_fast = time.perf_counter() - t2
        fbest, farg = _best_per_image(masked, starts, counts)
        results["fast"] = query_eval(fbest, farg, count_ul=True)
        results["fast"]["candidates"] = int(k_c)
        agree = {}
        for k in (10, 100):
            kk = min(k, len(codes))
            ex = np.argsort(-ll, axis=1, kind="stable")[:, :kk]
            fa = np.argsort(-masked, axis=1, kind="stable")[:, :kk]
            agree[f"recall@{k}"] = float(np.mean([len(set(e) & set(f)) / kk for e, f in zip(ex, fa)]))
        agree["candidates"] = int(k_c)
        results["fast_vs_exact"] = agree
        results.setdefault("seconds", {})["fast_candidates"] = t_fast
    else:
        results["fast"] = None
        results["fast_vs_exact"] = None
        logger.info("the model has no joint embedding head: fast mode not evaluated")

    # 5. random baseline (seeded)
    rand_scores = rng.random((n_q, n_img))
    rand_ious = []
    for qi, gtb in enumerate(q_gt_boxes):
        s = sources[qi]
        for k in range(len(gtb)):
            if counts[s] == 0:
                rand_ious.append(0.0)
                continue
            r = int(starts[s] + rng.integers(counts[s]))
            rand_ious.append(float(iou_xyxy_np(xywh_to_xyxy(boxes[r : r + 1].astype(np.float64)), xywh_to_xyxy(gtb[k : k + 1]))[0, 0]))
    results["random"] = {**ranking_metrics(source_ranks(rand_scores, sources)), **iou_fractions(rand_ious)}
    results["random"]["expected"] = {**{f"R@{k}": min(1.0, k / max(n_img, 1)) for k in RECALL_KS},
                                     "median_rank": (n_img + 1) / 2}
    results.setdefault("seconds", {}).update(detect=t_detect, exact_scoring=t_exact, total=time.perf_counter() - t0)
    results["exact_regions_per_second"] = float(ll.size / max(t_exact, 1e-9))
    return results


def format_metrics(m: Dict[str, Any]) -> str:
    lines = [f"retrieval on {m['prepared_dir']}:{m['split']}: {m['num_images']} images, {m['num_regions']} regions, "
             f"{m['num_queries']} queries x {m['captions_per_query']} captions"]
    cols = ["R@1", "R@5", "R@10", "median_rank", "IoU>0.1", "IoU>0.3", "IoU>0.5"]
    lines.append(f"{'mode':<8}" + "".join(f"{c:>12}" for c in cols))
    for mode in ("exact", "fast", "random"):
        r = m.get(mode)
        if r is None:
            lines.append(f"{mode:<8}  (not available: no joint embedding head)")
            continue
        lines.append(f"{mode:<8}" + "".join(f"{r[c]:>12.3f}" for c in cols))
    fv = m.get("fast_vs_exact")
    if fv:
        lines.append(f"fast vs exact ({fv['candidates']} candidates per caption): recall@10 {fv['recall@10']:.3f}, "
                     f"recall@100 {fv['recall@100']:.3f}")
    return "\n".join(lines)
