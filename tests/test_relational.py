"""Relational captions: order-free relation accuracy and relational region search."""
import os
from types import SimpleNamespace

import numpy as np
import pytest

from densecap.data.relations import canonical_relation, split_relation, swap_relation
from densecap.evaluation.region_accuracy import relation_correct_unordered
from densecap.retrieval.relational import evaluate_relational_retrieval, relational_hits, relational_queries


def test_split_and_swap_relations():
    assert split_relation("a red star left of a green square") == ("a red star", "left of", "a green square")
    assert split_relation("an orange hexagon next to a blue circle")[1] == "next to"
    assert split_relation("a large red circle") is None and split_relation("a star left of") is None
    assert swap_relation("a red star left of a green square") == "a green square right of a red star"
    assert swap_relation("a red star above a green square") == "a green square below a red star"
    assert swap_relation(swap_relation("a b next to c d")) == "a b next to c d"
    c = "a red star left of a green square"
    assert canonical_relation(c) == canonical_relation(swap_relation(c))
    assert canonical_relation("a large red circle") == "a large red circle"


def test_relation_correct_unordered():
    ref = "a red star left of a green square"
    assert relation_correct_unordered(ref, ref)
    assert relation_correct_unordered("a green square right of a red star", ref)  # the same relation, turned round
    assert not relation_correct_unordered("a green square left of a red star", ref)  # wrong
    assert not relation_correct_unordered("a red star right of a green square", ref)
    assert not relation_correct_unordered("a red star above a green square", ref)
    assert not relation_correct_unordered("a red star", ref) and relation_correct_unordered("a star", "a circle")


def test_relation_correct_aligned():
    from densecap.evaluation.region_accuracy import relation_correct_aligned

    ref = "a red circle left of a yellow star"
    assert relation_correct_aligned(ref, ref)
    assert relation_correct_aligned("a yellow star right of a red circle", ref)
    # a misnamed object: aligned by the words the objects share
    assert relation_correct_aligned("a yellow star right of a purple circle", ref)
    assert relation_correct_aligned("a purple star left of a yellow star", ref)
    assert not relation_correct_aligned("a yellow star left of a purple circle", ref)
    assert not relation_correct_aligned("a red circle above a yellow star", ref)
    assert not relation_correct_aligned("a red circle", ref) and not relation_correct_aligned(ref, "a red circle")


def test_region_accuracy_unordered_keys():
    """The evaluator: a turned-round prediction counts for the order-free keys only."""
    from densecap.evaluation.region_accuracy import RegionCaptionAccuracy

    caps = ["a red star left of a green square", "a large blue circle"]
    boxes = np.array([[0, 0, 50, 20], [60, 60, 20, 20]], np.float64)  # x y w h
    ds = SimpleNamespace(data=SimpleNamespace(image_ids=np.array([7])), gt_boxes_xywh=lambda i: boxes,
                         gt_captions_str=lambda i: caps)
    ev = RegionCaptionAccuracy(dataset=ds)
    inst = SimpleNamespace(pred_boxes=boxes, scores=np.array([0.9, 0.8]),
                           pred_captions=["a green square right of a red star", "a large blue circle"])
    ev.process([{"image_id": 7}], [{"instances": inst}])
    m = ev.evaluate()
    assert m["exact"] == 0.5 and m["exact_unordered"] == 1.0
    assert m["relation_accuracy"] == 0.0 and m["relation_count"] == 1
    assert m["relation_unordered_accuracy"] == 1.0 and m["relation_unordered_count"] == 1
    assert m["relation_aligned_accuracy"] == 1.0 and m["relation_aligned_count"] == 1


def test_relational_queries_are_unique_up_to_order():
    caps = [
        ["a red star left of a green square", "a red star", "a blue circle above a red star"],
        ["a green square right of a red star", "a pink diamond next to a blue circle"],
        ["a blue circle above a red star", "a large hexagon"],
    ]
    q = relational_queries(caps)
    # the red star / green square relation is in images 0 and 1 (either order): not unique;
    # "a blue circle above a red star" is in images 0 and 2
    assert q == [(1, 1, "a pink diamond next to a blue circle")]


def test_relational_hits():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 50, 50], [100, 100, 10, 10]], np.float32)
    img = np.array([0, 1, 1])
    gt = np.array([0, 0, 48, 52])
    h = relational_hits(np.array([2, 0, 1] + [2] * 7), img, boxes, 1, gt)
    assert h == {"hit@1": False, "hit@5": True, "hit@10": True, "image@10": True}
    h = relational_hits(np.array([0] * 10), img, boxes, 1, gt)
    assert h == {"hit@1": False, "hit@5": False, "hit@10": False, "image@10": False}


class _FakeModel:
    """A retrieval model whose 'language model' likes a caption for the region that was built for it:
    region codes are one-hot per (image, GT region); the LL is 0 for the matching pair, -1 otherwise."""

    def __init__(self, data, vocab, caps):
        from densecap.data.prepared import load_split  # noqa: F401  (same split as the evaluation)

        self.data, self.caps = data, caps
        self.model = SimpleNamespace()
        self.embedding_head = object()
        self.regions = [(j, k) for j, c in enumerate(caps) for k in range(len(c))]
        self.region_dim = len(self.regions)
        self.predictor = self

    def predict_paths(self, paths):
        out = []
        for p in paths:
            j = [self.data.path(i) for i in range(len(self.data))].index(p)
            sl = self.data.regions(j)
            ids = [r for r, (jj, _) in enumerate(self.regions) if jj == j]
            codes = np.eye(self.region_dim, dtype=np.float32)[ids]
            out.append(SimpleNamespace(boxes=self.data.boxes[sl], captions=self.caps[j], region_codes=codes))
        return out

    def encode_captions(self, captions):
        self._q = list(captions)
        return captions

    def score_captions(self, codes, captions):
        ll = -np.ones((len(captions), len(codes)), np.float32)
        for u, c in enumerate(captions):
            for r in range(len(codes)):
                j, k = self.regions[int(np.argmax(codes[r]))]
                if self.caps[j][k] == c:
                    ll[u, r] = 0.0
        return ll

    def score_rows(self, codes, captions):
        return np.array([self.score_captions(codes[r : r + 1], [c])[0, 0] for r, c in enumerate(captions)], np.float32)

    def embed_sentences(self, ids):
        return np.ones((len(ids), 2), np.float32)

    def embed_regions(self, codes):
        return np.ones((len(codes), 2), np.float32)


def test_evaluate_relational_retrieval_with_a_perfect_scorer(synthetic_root):
    from densecap.data.prepared import load_split, load_vocab

    prepared = os.path.join(synthetic_root, "prepared")
    data, vocab = load_split(prepared, "train"), load_vocab(prepared)
    caps = [data.caption_strings(i, vocab) for i in range(len(data))]
    m = evaluate_relational_retrieval(_FakeModel(data, vocab, caps), prepared, "train", candidates=(1000,))
    assert m["num_queries"] == len(relational_queries(caps)) > 0
    assert m["exact"]["hit@1"] == 1.0 and m["exact"]["hit@10"] == 1.0
    assert m["fast_1000"]["hit@10"] == 1.0
    # grounded as pairs: the phrases find the objects, the geometry model (fitted on the train
    # split's relations) orders the pairs, the union box is the annotated one
    assert m["geometry"]["num_triples"] > 0 and m["geometry"]["train_accuracy"] > 0.9
    assert m["pairs_exact"]["hit@10"] >= 0.9 and m["pairs_fast_1000"]["hit@10"] == m["pairs_exact"]["hit@10"]
    assert m["pairs_exact"]["hit@1"] >= m["pairs_exact_no_geometry"]["hit@1"]
