"""How often region captions are *exactly* right, and which words go wrong.

DenseCap mAP forgives one or two wrong words in a short caption (METEOR stays above the low
thresholds), so this evaluator reports what mAP hides. Predictions of an image are matched to GT
boxes greedily in descending score order (each GT box once, IoU >= ``iou_threshold``). For each
matched pair:

* ``exact``: the predicted caption equals one of the references of that GT box (the captions of
  every GT box overlapping it at IoU >= 0.7, i.e. its merge group, as in the mAP protocol);
* per attribute (size, colour, fill, shape, relation word): the sequence of the caption's words
  of that attribute equals the reference's (synonyms of one size count as equal; a reference
  without a fill word and a prediction without one agree). Only pairs where the reference or
  the prediction has such a word count for that attribute.
* relation words read independently of the object order: ``relation_unordered_accuracy`` (the
  caption turned round when it names the reference's objects the other way; pairs where either
  names a relation) and ``relation_aligned_accuracy`` (pairs where both name a relation, the
  objects aligned by shared words: :func:`relation_correct_aligned`).

The attribute word lists are those of the synthetic dataset (``densecap.data.shape_words``); on
other data only ``exact`` is meaningful.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import numpy as np

from densecap.data.shape_words import attribute_words
from densecap.data.relations import INVERSE, split_relation, swap_relation
from densecap.structures.boxes import iou_xyxy_np, xywh_to_xyxy
from densecap.utils import comm

from .evaluator import DatasetEvaluator

def attribute_sequence(caption: str, words: Mapping[str, str]) -> List[str]:
    return [words[w] for w in caption.split() if w in words]


def relation_correct_unordered(caption: str, reference: str) -> bool:
    """The relation word of ``caption`` equals the reference's, after turning the caption around when
    it names the reference's two objects in the opposite order (object = its words, e.g. "a red
    star"). Captions without a relation agree with references without one."""
    p, r = split_relation(caption), split_relation(reference)
    if p is None or r is None:
        return p is None and r is None
    rel = p[1]
    if p[0] != p[2] and (p[0], p[2]) == (r[2], r[0]):
        rel = INVERSE[rel]
    return rel == r[1]


def relation_correct_aligned(caption: str, reference: str) -> bool:
    """For a caption and a reference that both name a relation: the relation word is right once
    the caption's two objects are aligned with the reference's by the words they share (turned
    round when its subject shares more words with the reference's object and its object with the
    reference's subject), so a misnamed object does not decide the relation word's fate."""
    p, r = split_relation(caption), split_relation(reference)
    if p is None or r is None:
        return False

    def overlap(a: str, b: str) -> int:
        return len(set(a.split()) & set(b.split()) - {"a", "an", "the"})

    rel = p[1]
    if overlap(p[0], r[2]) + overlap(p[2], r[0]) > overlap(p[0], r[0]) + overlap(p[2], r[2]):
        rel = INVERSE[rel]
    return rel == r[1]


class RegionCaptionAccuracy(DatasetEvaluator):
    def __init__(self, *, dataset, iou_threshold: float = 0.5) -> None:
        self.dataset = dataset
        self.iou_threshold = float(iou_threshold)
        self._index = {int(x): i for i, x in enumerate(dataset.data.image_ids.tolist())}
        self.reset()

    def reset(self) -> None:
        self._pairs: Dict[int, List] = {}
        self._num_gt: Dict[int, int] = {}

    def process(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        for inp, out in zip(inputs, outputs):
            image_id = int(inp["image_id"])
            i = self._index.get(image_id)
            if i is None or image_id in self._pairs:
                continue
            gt_boxes = xywh_to_xyxy(np.asarray(self.dataset.gt_boxes_xywh(i), dtype=np.float64).reshape(-1, 4))
            gt_caps = self.dataset.gt_captions_str(i)
            inst = out["instances"]
            pred = xywh_to_xyxy(np.asarray(inst.pred_boxes, dtype=np.float64).reshape(-1, 4))
            order = np.argsort(-np.asarray(inst.scores, dtype=np.float64), kind="stable")
            caps = list(inst.pred_captions)
            iou = iou_xyxy_np(pred, gt_boxes) if len(gt_boxes) else np.zeros((len(pred), 0))
            groups = iou_xyxy_np(gt_boxes, gt_boxes) >= 0.7 if len(gt_boxes) else np.zeros((0, 0), bool)
            used = np.zeros(len(gt_boxes), dtype=bool)
            pairs = []
            for d in order:
                if iou.shape[1] == 0:
                    break
                cand = np.where(~used, iou[d], -1.0)
                j = int(np.argmax(cand))
                if cand[j] < self.iou_threshold:
                    continue
                used[j] = True
                refs = [gt_caps[k] for k in np.nonzero(groups[j])[0]]
                pairs.append((caps[d], gt_caps[j], refs))
            self._pairs[image_id] = pairs
            self._num_gt[image_id] = len(gt_boxes)

    def evaluate(self) -> Dict[str, float]:
        parts = comm.all_gather((self._pairs, self._num_gt))
        pairs, num_gt = [], 0
        seen = set()
        for p, n in parts:
            for k, v in p.items():
                if k not in seen:
                    seen.add(k)
                    pairs.extend(v)
                    num_gt += n[k]
        out: Dict[str, float] = {"num_matched": len(pairs), "num_gt": num_gt}
        out["recall_iou"] = len(pairs) / num_gt if num_gt else 0.0
        out["exact"] = float(np.mean([c in refs for c, _, refs in pairs])) if pairs else 0.0
        out["exact_unordered"] = float(np.mean([c in refs or swap_relation(c) in refs for c, _, refs in pairs])) if pairs else 0.0
        rel = [(c, ref) for c, ref, _ in pairs if split_relation(c) is not None or split_relation(ref) is not None]
        out["relation_unordered_accuracy"] = float(np.mean([relation_correct_unordered(c, r) for c, r in rel])) if rel else 0.0
        out["relation_unordered_count"] = len(rel)
        both = [(c, ref) for c, ref, _ in pairs if split_relation(c) is not None and split_relation(ref) is not None]
        out["relation_aligned_accuracy"] = float(np.mean([relation_correct_aligned(c, r) for c, r in both])) if both else 0.0
        out["relation_aligned_count"] = len(both)
        for name, words in attribute_words().items():
            n_ok = n = 0
            for cap, ref, _ in pairs:
                a, b = attribute_sequence(cap, words), attribute_sequence(ref, words)
                if a or b:
                    n += 1
                    n_ok += a == b
            out[f"{name}_accuracy"] = n_ok / n if n else 0.0
            out[f"{name}_count"] = n
        return out
