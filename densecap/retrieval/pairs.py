"""Relational queries grounded as pairs of regions: "a red star left of a green square".

A query naming two objects and their relation is parsed into ``(subject, relation, object)``
(:func:`densecap.data.relations.split_relation`) and grounded the way scene-graph retrieval does it
(Johnson et al., "Image Retrieval using Scene Graphs", CVPR 2015): every region is scored as the
subject and as the object by the language model's log-likelihood of a caption naming each phrase
given its code (:func:`phrase_captions`), the best few of each per image are paired, and each pair
gets

    score(i, j) = log p(subject | code_i) + log p(object | code_j) + log p(relation | box_i, box_j)

where the phrase terms are log-likelihoods of :func:`phrase_captions` and the last term is a small
learnt model of the pair's geometry (:class:`~densecap.modeling.relation_geometry.RelationGeometry`,
fitted on a training split's annotated relations). The answer is the union box of the pair (the
box a relational region is annotated with), with the two parts it came from. Everything comes
from an index (codes, boxes and captions): no image is read again at query time.

Shapes: R: regions scored, P: pairs.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from densecap.data.relations import split_relation
from densecap.data.tokenizer import tokenize
from densecap.modeling.relation_geometry import (GEOMETRY_FILE, RelationGeometry, content_words, names_phrase, pair_features,
                                                 relation_triples, split_triples, union_xywh)
from densecap.structures.boxes import iou_xyxy_np, paired_iou_xyxy_np, xywh_to_xyxy

logger = logging.getLogger(__name__)

__all__ = ["RelationGeometry", "relation_triples", "pair_features", "ground_pairs", "parse_relational",
           "GEOMETRY_FILE", "phrase_captions", "score_phrase", "split_triples", "load_geometry", "PairHit"]


def parse_relational(text: str) -> Optional[Tuple[str, str, str]]:
    """``(subject phrase, relation, object phrase)`` of a query that names a relation, else None."""
    return split_relation(" ".join(tokenize(text)))


# ------------------------------------------------------------------------------------------
# phrases
# ------------------------------------------------------------------------------------------
def phrase_captions(phrase: str, region_captions: Sequence[str]) -> List[str]:
    """The caption each region is scored with for a query phrase ("a red star"): the region's own
    caption when it names the phrase ("a large striped red star") and no relation, else the
    phrase itself.

    The quantity wanted is p(some caption naming the phrase | region). A phrase of a relational
    query is shorter than the captions regions were trained with ("a red star" never ends a
    region caption), so its own likelihood estimates that badly. The region's caption, when it
    names the phrase, is one caption naming it: its likelihood is a lower bound of the quantity
    that the language model ranks well.
    """
    words = content_words(phrase)
    return [c if c and split_relation(c) is None and names_phrase(c, words) else phrase for c in region_captions]


def score_phrase(rmodel, codes: np.ndarray, region_captions: Sequence[str], phrase: str) -> np.ndarray:
    """float32 (R,) log-likelihood of :func:`phrase_captions` given each region code (R, D);
    ``rmodel`` a :class:`~densecap.retrieval.search.RetrievalModel`. A region whose caption names
    a relation shows two objects, not one: it is no part of a pair (-inf)."""
    if not len(codes):
        return np.zeros(0, np.float32)
    out = rmodel.score_rows(codes, rmodel.encode_captions(phrase_captions(phrase, region_captions)))
    out[[split_relation(c) is not None for c in region_captions]] = -np.inf
    return out


# ------------------------------------------------------------------------------------------
# grounding
# ------------------------------------------------------------------------------------------
def _best_per_image(ids: np.ndarray, scores: np.ndarray, image: np.ndarray, k: int) -> Dict[int, np.ndarray]:
    """The k best-scored of ``ids`` in each image: {image: ids best first}."""
    order = np.lexsort((-scores, image[ids]))
    ids = ids[order]
    im = image[ids]
    start = np.r_[0, np.flatnonzero(np.diff(im)) + 1]
    out = {}
    for a, b in zip(start, np.r_[start[1:], len(ids)]):
        out[int(im[a])] = ids[a : min(b, a + k)]
    return out


@dataclass
class PairHit:
    score: float
    image: int
    subject: int  # region id
    object: int  # region id
    box: np.ndarray  # (4,) union [x, y, w, h]
    parts: Tuple[float, float, float]  # subject, object, relation log-scores


def ground_pairs(
    subject_ids: np.ndarray,
    subject_scores: np.ndarray,
    object_ids: np.ndarray,
    object_scores: np.ndarray,
    boxes: np.ndarray,
    region_image: np.ndarray,
    relation: str,
    geometry: Optional[RelationGeometry],
    *,
    per_image: int = 5,
    topk: int = 10,
    same_object_iou: float = 0.5,
    nms_iou: float = 0.7,
) -> List[PairHit]:
    """The ``topk`` best (subject, object) pairs, best first (module docstring for the score).

    subject_ids / object_ids: region ids scored as the subject / object (any subset of the
    regions, e.g. a fast stage's candidates) with their log-likelihoods (-inf: not a candidate); boxes (R, 4) [x, y, w, h]
    and region_image (R,) index every region id. Per image the ``per_image`` best of each are
    paired; two boxes with IoU > ``same_object_iou`` are taken for one object and not paired;
    within an image, a pair whose union box overlaps a better pair's by IoU > ``nms_iou`` is dropped.
    """
    subject_scores = np.asarray(subject_scores, np.float64)
    object_scores = np.asarray(object_scores, np.float64)
    ok_s, ok_o = np.isfinite(subject_scores), np.isfinite(object_scores)  # -inf: not a candidate
    subject_ids, subject_scores = np.asarray(subject_ids, np.int64)[ok_s], subject_scores[ok_s]
    object_ids, object_scores = np.asarray(object_ids, np.int64)[ok_o], object_scores[ok_o]
    if not len(subject_ids) or not len(object_ids):
        return []
    s_of = dict(zip(subject_ids.tolist(), subject_scores.tolist()))
    o_of = dict(zip(object_ids.tolist(), object_scores.tolist()))
    subs = _best_per_image(subject_ids, subject_scores, region_image, per_image)
    objs = _best_per_image(object_ids, object_scores, region_image, per_image)
    si, oi = [], []
    for im, s in subs.items():
        o = objs.get(im)
        if o is None:
            continue
        si.append(np.repeat(s, len(o)))
        oi.append(np.tile(o, len(s)))
    if not si:
        return []
    si, oi = np.concatenate(si), np.concatenate(oi)  # P
    a, b = np.asarray(boxes[si], np.float64), np.asarray(boxes[oi], np.float64)  # P 4
    iou = paired_iou_xyxy_np(xywh_to_xyxy(a), xywh_to_xyxy(b))
    keep = (si != oi) & (iou <= same_object_iou)
    si, oi, a, b = si[keep], oi[keep], a[keep], b[keep]
    if not len(si):
        return []
    ls = np.array([s_of[i] for i in si.tolist()])
    lo = np.array([o_of[j] for j in oi.tolist()])
    lr = geometry.log_prob(a, b, relation).astype(np.float64) if geometry is not None else np.zeros(len(si))
    total = ls + lo + lr
    union = union_xywh(a, b)
    order = np.argsort(-total, kind="stable")
    hits: List[PairHit] = []
    kept_by_image: Dict[int, List[np.ndarray]] = {}
    for p in order.tolist():
        im = int(region_image[si[p]])
        u = union[p]
        prev = kept_by_image.setdefault(im, [])
        if prev and float(iou_xyxy_np(xywh_to_xyxy(u[None]), xywh_to_xyxy(np.stack(prev))).max()) > nms_iou:
            continue
        prev.append(u)
        hits.append(PairHit(score=float(total[p]), image=im, subject=int(si[p]), object=int(oi[p]), box=u,
                            parts=(float(ls[p]), float(lo[p]), float(lr[p]))))
        if len(hits) >= topk:
            break
    return hits


def load_geometry(path: Optional[str], index_root: Optional[str] = None) -> Optional[RelationGeometry]:
    """The geometry model at ``path``, else the index's own ``relations.json``, else None."""
    if path:
        return RelationGeometry.load(path)
    if index_root and os.path.exists(os.path.join(index_root, GEOMETRY_FILE)):
        return RelationGeometry.load(os.path.join(index_root, GEOMETRY_FILE))
    return None

