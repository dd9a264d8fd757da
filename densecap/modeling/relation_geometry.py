"""p(relation | subject box, object box): the geometry of two regions in a relation.

A relational region ("a red star left of a green square") is annotated with the union of its two
objects' boxes. :class:`RelationGeometry` is a small model of which relation words the two boxes'
arrangement supports, fitted on a training split's relational regions whose two objects are
annotated too (:func:`relation_triples`). Relational search grounds queries with it
(``densecap.retrieval.pairs``), and ``MODEL.ROI_HEADS.PAIR_RELATIONS`` lets the region captioner
compose the captions of pair regions with it (``densecap.modeling.pair_captions``).

Shapes: P: pairs, F: geometry features, C: relations the model knows.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from densecap.data.relations import INVERSE, split_relation
from densecap.structures.boxes import iou_xyxy_np, paired_iou_xyxy_np, xywh_to_xyxy
from densecap.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["RelationGeometry", "pair_features", "relation_triples", "split_triples", "union_xywh", "content_words",
           "names_phrase", "GEOMETRY_FILE"]

GEOMETRY_FILE = "relations.json"  # the geometry model's default name (inside an index directory)
FORMAT = "densecap-relation-geometry-v1"
ARTICLES = {"a", "an", "the"}


def union_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(P, 4) [x, y, w, h] union boxes of (P, 4) pairs."""
    x1 = np.minimum(a[:, 0], b[:, 0])
    y1 = np.minimum(a[:, 1], b[:, 1])
    x2 = np.maximum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y2 = np.maximum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)


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
    iou = paired_iou_xyxy_np(xywh_to_xyxy(a), xywh_to_xyxy(b))
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


def content_words(phrase: str) -> List[str]:
    """The words of a phrase without its articles."""
    return [w for w in phrase.split() if w not in ARTICLES]


def names_phrase(caption: str, phrase_words: List[str]) -> bool:
    """Does ``caption`` name ``phrase_words`` (its content words, in order, possibly with others
    between: "a large striped red star" names "a red star")?"""
    it = iter(caption.split())
    return all(any(w == c for c in it) for w in phrase_words)


def relation_triples(boxes: np.ndarray, captions: Sequence[str], *, min_iou: float = 0.7) -> List[tuple]:
    """``(subject box, object box, relation)`` of one image's relational regions.

    boxes (n, 4) [x, y, w, h] and captions of the image's annotated regions. For each relational
    caption, the subject and object are the image's non-relational regions that name the two
    phrases (:func:`names_phrase`) and whose union box overlaps the relational box best; a relation whose
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
        si = [i for i in plain if names_phrase(captions[i], content_words(subj))]
        oi = [i for i in plain if names_phrase(captions[i], content_words(obj))]
        best, pair = -1.0, None
        for i in si:
            for j in oi:
                if i == j:
                    continue
                u = union_xywh(boxes[i : i + 1], boxes[j : j + 1])
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
