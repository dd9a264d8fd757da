"""Relational queries grounded as pairs of regions: "a red star left of a green square".

A query naming two objects and their relation is parsed into ``(subject, relation, object)``
(:func:`densecap.data.relations.split_relation`) and grounded the way scene-graph retrieval does it
(Johnson et al., "Image Retrieval using Scene Graphs", CVPR 2015): every region is scored as the
subject and as the object by the language model's log-likelihood of a caption naming each phrase
given its code (:func:`phrase_captions`), the best few of each per image are paired, and each pair
gets

    score(i, j) = log p(subject | code_i) + log p(object | code_j) + log p(relation | box_i, box_j)

(``log p(subject | code_i)``: the log-likelihood of :func:`phrase_captions`).

where the last term is a small learnt model of the pair's geometry (:class:`RelationGeometry`,
fitted on a training split's annotated relations). The answer is the union box of the pair, the
box a relational region is annotated with, with the two parts it came from. Everything comes from
an index (codes and boxes): no image is read again at query time.

Shapes: R: regions scored, P: pairs, F: geometry features, C: relations the geometry model knows.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from densecap.data.relations import INVERSE, split_relation
from densecap.structures.boxes import iou_xyxy_np, xywh_to_xyxy
from densecap.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["RelationGeometry", "relation_triples", "pair_features", "ground_pairs", "parse_relational",
           "GEOMETRY_FILE", "phrase_captions", "score_phrase", "split_triples", "load_geometry", "PairHit"]

GEOMETRY_FILE = "relations.json"  # the geometry model's default name inside an index directory
FORMAT = "densecap-relation-geometry-v1"
ARTICLES = {"a", "an", "the"}


def parse_relational(text: str) -> Optional[Tuple[str, str, str]]:
    """``(subject phrase, relation, object phrase)`` of a query that names a relation, else None."""
    return split_relation(" ".join(re.findall(r"[a-z0-9]+", text.lower())))


# ------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------
def pair_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 (P, F) features of subject boxes ``a`` and object boxes ``b`` (P, 4) [x, y, w, h].

    Scale-free: offsets and gaps are divided by the square root of the union box's area. The
    features: centre offsets dx, dy and their magnitudes; the four gaps (b right of a, a right
    of b, b below a, a below b; negative when the boxes overlap along that axis); log width and
    height ratios; IoU.
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax1, ay1, aw, ah = a.T
    bx1, by1, bw, bh = b.T
    ax2, ay2, bx2, by2 = ax1 + aw, ay1 + ah, bx1 + bw, by1 + bh
    ux1, uy1 = np.minimum(ax1, bx1), np.minimum(ay1, by1)
    ux2, uy2 = np.maximum(ax2, bx2), np.maximum(ay2, by2)
    s = np.sqrt(np.maximum((ux2 - ux1) * (uy2 - uy1), 1e-6))
    dx = ((bx1 + bw / 2) - (ax1 + aw / 2)) / s
    dy = ((by1 + bh / 2) - (ay1 + ah / 2)) / s
    iw = np.maximum(0.0, np.minimum(ax2, bx2) - np.maximum(ax1, bx1))
    ih = np.maximum(0.0, np.minimum(ay2, by2) - np.maximum(ay1, by1))
    inter = iw * ih
    iou = inter / np.maximum(aw * ah + bw * bh - inter, 1e-6)
    feats = [dx, dy, np.abs(dx), np.abs(dy), (bx1 - ax2) / s, (ax1 - bx2) / s, (by1 - ay2) / s, (ay1 - by2) / s,
             np.log(np.maximum(bw, 1e-3) / np.maximum(aw, 1e-3)), np.log(np.maximum(bh, 1e-3) / np.maximum(ah, 1e-3)), iou]
    return np.stack(feats, axis=1).astype(np.float32)


@dataclass
class RelationGeometry:
    """p(relation | subject box, object box): a two-layer perceptron over :func:`pair_features`.

    Fitted with :meth:`fit` on ``(subject box, object box, relation)`` triples (each with an inverse
    in :data:`densecap.data.relations.INVERSE` is also used turned round); saved and loaded as JSON.
    """

    relations: List[str]
    weights: Dict[str, np.ndarray]
    mean: np.ndarray
    std: np.ndarray
    num_triples: int = 0
    train_accuracy: float = 0.0

    HIDDEN = 32

    @classmethod
    def fit(cls, triples: Sequence[Tuple[Sequence[float], Sequence[float], str]], *, steps: int = 400,
            seed: int = 0) -> "RelationGeometry":
        import torch

        aug = list(triples) + [(b, a, INVERSE[r]) for a, b, r in triples if r in INVERSE]
        if not aug:
            raise ValueError("no relation triples to fit the geometry model on")
        rels = sorted({r for _, _, r in aug})
        x = pair_features(np.array([t[0] for t in aug]), np.array([t[1] for t in aug]))  # P F
        y = np.array([rels.index(t[2]) for t in aug], np.int64)  # P
        mean, std = x.mean(0), x.std(0) + 1e-6
        g = torch.Generator().manual_seed(seed)
        xt = torch.from_numpy((x - mean) / std)
        yt = torch.from_numpy(y)
        f = x.shape[1]
        w1 = (torch.randn(f, cls.HIDDEN, generator=g) / math.sqrt(f)).requires_grad_()
        b1 = torch.zeros(cls.HIDDEN, requires_grad=True)
        w2 = (torch.randn(cls.HIDDEN, len(rels), generator=g) / math.sqrt(cls.HIDDEN)).requires_grad_()
        b2 = torch.zeros(len(rels), requires_grad=True)
        opt = torch.optim.Adam([w1, b1, w2, b2], lr=0.03)
        for _ in range(int(steps)):  # full batch: a few thousand triples
            logits = torch.relu(xt @ w1 + b1) @ w2 + b2
            loss = torch.nn.functional.cross_entropy(logits, yt)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = float(((torch.relu(xt @ w1 + b1) @ w2 + b2).argmax(1) == yt).float().mean())
        weights = {k: v.detach().numpy().astype(np.float32) for k, v in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))}
        logger.info("relation geometry: %d triples (%d with inverses), %d relations, training accuracy %.3f",
                    len(triples), len(aug), len(rels), acc)
        return cls(relations=rels, weights=weights, mean=mean.astype(np.float32), std=std.astype(np.float32),
                   num_triples=len(triples), train_accuracy=acc)

    def log_prob(self, a: np.ndarray, b: np.ndarray, relation: str) -> np.ndarray:
        """float32 (P,) log p(relation | a, b) for boxes (P, 4) [x, y, w, h]. A relation the model
        was not fitted on gets log(1 / C) everywhere (no information), with a warning."""
        n = len(np.asarray(a).reshape(-1, 4))
        if relation not in self.relations:
            logger.warning("relation %r is not one the geometry model knows (%s): geometry ignored",
                           relation, ", ".join(self.relations))
            return np.full(n, -math.log(max(1, len(self.relations))), np.float32)
        x = (pair_features(a, b) - self.mean) / self.std  # P F
        w = self.weights
        z = np.maximum(x @ w["w1"] + w["b1"], 0.0) @ w["w2"] + w["b2"]  # P C
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return logp[:, self.relations.index(relation)].astype(np.float32)

    def to_json(self) -> Dict[str, Any]:
        return {"format": FORMAT, "relations": self.relations, "num_triples": self.num_triples,
                "train_accuracy": self.train_accuracy, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "weights": {k: v.tolist() for k, v in self.weights.items()}}

    def save(self, path: str) -> None:
        atomic_write_text(path, json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str) -> "RelationGeometry":
        try:
            with open(path, "r", encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the relation geometry model ({e})") from e
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"{path}: not a relation geometry model (expected format {FORMAT!r})")
        try:
            w = {k: np.asarray(d["weights"][k], np.float32) for k in ("w1", "b1", "w2", "b2")}
            out = cls(relations=list(d["relations"]), weights=w, mean=np.asarray(d["mean"], np.float32),
                      std=np.asarray(d["std"], np.float32), num_triples=int(d.get("num_triples", 0)),
                      train_accuracy=float(d.get("train_accuracy", 0.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: malformed relation geometry model ({e})") from e
        if w["w2"].shape[1] != len(out.relations) or w["w1"].shape[0] != len(out.mean):
            raise ValueError(f"{path}: relation geometry model weights do not match its relations / features")
        return out


def _content(phrase: str) -> List[str]:
    return [w for w in phrase.split() if w not in ARTICLES]


def _names(caption: str, phrase_words: List[str]) -> bool:
    """Does ``caption`` name ``phrase_words`` (its content words, in order, possibly with others
    between: "a large striped red star" names "a red star")?"""
    it = iter(caption.split())
    return all(any(w == c for c in it) for w in phrase_words)


def relation_triples(boxes: np.ndarray, captions: Sequence[str], *, min_iou: float = 0.7) -> List[tuple]:
    """``(subject box, object box, relation)`` of one image's relational regions.

    boxes (n, 4) [x, y, w, h] and captions of the image's annotated regions. For each relational
    caption, the subject and object are the image's non-relational regions that name the two
    phrases (:func:`_names`) and whose union box overlaps the relational box best; a relation whose
    best pair has IoU < ``min_iou`` with it is skipped (its parts are not annotated).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    parts = [split_relation(c) for c in captions]
    plain = [k for k, p in enumerate(parts) if p is None]
    out = []
    for k, p in enumerate(parts):
        if p is None:
            continue
        subj, rel, obj = p
        si = [i for i in plain if _names(captions[i], _content(subj))]
        oi = [i for i in plain if _names(captions[i], _content(obj))]
        best, pair = -1.0, None
        for i in si:
            for j in oi:
                if i == j:
                    continue
                u = _union(boxes[i : i + 1], boxes[j : j + 1])
                v = float(iou_xyxy_np(xywh_to_xyxy(u), xywh_to_xyxy(boxes[k : k + 1]))[0, 0])
                if v > best:
                    best, pair = v, (i, j)
        if pair is not None and best >= min_iou:
            out.append((boxes[pair[0]].tolist(), boxes[pair[1]].tolist(), rel))
    return out


def split_triples(data, vocab) -> List[tuple]:
    """:func:`relation_triples` of every image of a :class:`~densecap.data.prepared.PreparedSplit`."""
    out = []
    for i in range(len(data)):
        out += relation_triples(data.boxes[data.regions(i)], data.caption_strings(i, vocab))
    return out


# ------------------------------------------------------------------------------------------
# phrases
# ------------------------------------------------------------------------------------------
def phrase_captions(phrase: str, region_captions: Sequence[str]) -> List[str]:
    """The caption each region is scored with for a query phrase ("a red star"): the region's own
    caption when it names the phrase ("a large striped red star") and no relation, else the
    phrase itself.

    The quantity wanted is p(a caption naming the phrase | region). A phrase of a relational
    query is shorter than the region's captions were ("a red star" never ends a region caption),
    so its own likelihood is a poor estimate of that; the best of {the phrase, the region's
    caption if it names the phrase} is a lower bound of it that the language model does rank.
    """
    words = _content(phrase)
    return [c if c and split_relation(c) is None and _names(c, words) else phrase for c in region_captions]


def score_phrase(rmodel, codes: np.ndarray, region_captions: Sequence[str], phrase: str) -> np.ndarray:
    """float32 (R,) log-likelihood of :func:`phrase_captions` given each region code (R, D);
    ``rmodel`` a :class:`~densecap.retrieval.search.RetrievalModel`."""
    if not len(codes):
        return np.zeros(0, np.float32)
    return rmodel.score_rows(codes, rmodel.encode_captions(phrase_captions(phrase, region_captions)))


# ------------------------------------------------------------------------------------------
# grounding
# ------------------------------------------------------------------------------------------
def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(P, 4) [x, y, w, h] union boxes of (P, 4) pairs."""
    x1 = np.minimum(a[:, 0], b[:, 0])
    y1 = np.minimum(a[:, 1], b[:, 1])
    x2 = np.maximum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y2 = np.maximum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)


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
    regions, e.g. a fast stage's candidates) with their log-likelihoods; boxes (R, 4) [x, y, w, h]
    and region_image (R,) index every region id. Per image the ``per_image`` best of each are
    paired; two boxes with IoU > ``same_object_iou`` are taken for one object and not paired;
    within an image, a pair whose union box overlaps a better pair's by IoU > ``nms_iou`` is dropped.
    """
    subject_ids = np.asarray(subject_ids, np.int64)
    object_ids = np.asarray(object_ids, np.int64)
    if not len(subject_ids) or not len(object_ids):
        return []
    s_of = dict(zip(subject_ids.tolist(), np.asarray(subject_scores, np.float64).tolist()))
    o_of = dict(zip(object_ids.tolist(), np.asarray(object_scores, np.float64).tolist()))
    subs = _best_per_image(subject_ids, np.asarray(subject_scores, np.float64), region_image, per_image)
    objs = _best_per_image(object_ids, np.asarray(object_scores, np.float64), region_image, per_image)
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
    aa, bb = xywh_to_xyxy(a), xywh_to_xyxy(b)
    iw = np.clip(np.minimum(aa[:, 2], bb[:, 2]) - np.maximum(aa[:, 0], bb[:, 0]), 0, None)
    ih = np.clip(np.minimum(aa[:, 3], bb[:, 3]) - np.maximum(aa[:, 1], bb[:, 1]), 0, None)
    inter = iw * ih
    iou = inter / np.maximum(a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter, 1e-9)
    keep = (si != oi) & (iou <= same_object_iou)
    si, oi, a, b = si[keep], oi[keep], a[keep], b[keep]
    if not len(si):
        return []
    ls = np.array([s_of[i] for i in si.tolist()])
    lo = np.array([o_of[j] for j in oi.tolist()])
    lr = geometry.log_prob(a, b, relation).astype(np.float64) if geometry is not None else np.zeros(len(si))
    total = ls + lo + lr
    union = _union(a, b)
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

