"""Relational queries grounded as pairs of regions: geometry model, triples, pairing, search."""
import json

import numpy as np
import pytest

from densecap.data.synthetic import Obj, relation
from densecap.retrieval.pairs import (RelationGeometry, ground_pairs, pair_features, parse_relational,
                                      relation_triples)


def _random_triples(n, seed):
    """(subject box, object box, relation) by the synthetic data's own rule, on random boxes."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        a = Obj("star", "red", "small", "solid", tuple(int(v) for v in (*rng.integers(0, 200, 2), *rng.integers(10, 60, 2))))
        b = Obj("square", "green", "small", "solid", tuple(int(v) for v in (*rng.integers(0, 200, 2), *rng.integers(10, 60, 2))))
        r = relation(a, b)
        if r is not None:
            out.append((list(a.box), list(b.box), r))
    return out


@pytest.fixture(scope="module")
def geo():
    return RelationGeometry.fit(_random_triples(1500, 0))


def test_parse_relational():
    assert parse_relational("A red star, left of a green square!") == ("a red star", "left of", "a green square")
    assert parse_relational("a large red circle") is None


def test_pair_features_scale_free():
    a = np.array([[10, 10, 20, 30]], np.float64)
    b = np.array([[50, 12, 25, 25]], np.float64)
    f = pair_features(a, b)
    assert f.shape == (1, 11) and f.dtype == np.float32
    np.testing.assert_allclose(pair_features(a * 3.5, b * 3.5), f, rtol=1e-5, atol=1e-6)
    assert f[0, 0] > 0 and f[0, 4] > 0  # b is to the right of a, with a gap


def test_geometry_learns_the_relation_and_round_trips(geo, tmp_path):
    assert geo.relations == ["above", "below", "left of", "next to", "right of"]
    held = _random_triples(300, 1)
    pred = [max(geo.relations, key=lambda r: geo.log_prob(np.array([a]), np.array([b]), r)[0]) for a, b, _ in held]
    acc = np.mean([p == r for p, (_, _, r) in zip(pred, held)])
    assert acc > 0.9, acc
    # probabilities over the relations sum to one
    a, b = np.array([t[0] for t in held]), np.array([t[1] for t in held])
    total = sum(np.exp(geo.log_prob(a, b, r)) for r in geo.relations)
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)
    path = str(tmp_path / "relations.json")
    geo.save(path)
    back = RelationGeometry.load(path)
    np.testing.assert_allclose(back.log_prob(a, b, "left of"), geo.log_prob(a, b, "left of"), rtol=1e-6)
    # an unknown relation carries no information
    np.testing.assert_allclose(geo.log_prob(a[:2], b[:2], "on top of"), -np.log(5), rtol=1e-6)


def test_geometry_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        RelationGeometry.load(str(bad))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="other.json.*not a relation geometry model"):
        RelationGeometry.load(str(other))
    with pytest.raises(ValueError, match="no relation triples"):
        RelationGeometry.fit([])


def test_relation_triples_find_the_two_objects():
    boxes = np.array([[10, 10, 20, 20], [60, 12, 20, 20], [10, 10, 70, 22], [100, 100, 10, 10], [0, 0, 5, 5]], float)
    caps = ["a large striped red star", "a small green square", "a red star left of a green square",
            "a blue circle", "a yellow star above a blue circle"]  # the last one's star is not annotated
    t = relation_triples(boxes, caps)
    assert t == [([10, 10, 20, 20], [60, 12, 20, 20], "left of")]


def test_ground_pairs_ranks_by_phrases_and_geometry(geo):
    # image 0: red star left of green square (the target); image 1: the same objects turned round;
    # image 2: a red star only; region 5 duplicates region 0 (same object: never paired with it)
    boxes = np.array([[10, 10, 20, 20], [60, 12, 20, 20], [60, 10, 20, 20], [10, 12, 20, 20], [30, 30, 20, 20],
                      [11, 10, 20, 20]], float)
    image = np.array([0, 0, 1, 1, 2, 0])
    star = np.array([0.0, -5.0, 0.0, -5.0, 0.0, -0.1])  # log p("a red star" | region)
    square = np.array([-5.0, 0.0, -5.0, 0.0, -5.0, -5.0])
    ids = np.arange(6)
    hits = ground_pairs(ids, star, ids, square, boxes, image, "left of", geo, topk=20, nms_iou=1.0)
    assert hits[0].image == 0 and (hits[0].subject, hits[0].object) == (0, 1)
    np.testing.assert_allclose(hits[0].box, [10, 10, 70, 22])
    assert hits[0].score == pytest.approx(sum(hits[0].parts))
    assert all({h.subject, h.object} != {0, 5} for h in hits)
    turned = [h for h in hits if (h.subject, h.object) == (2, 3)][0]
    assert turned.parts[2] < hits[0].parts[2] - 2  # "left of" is unlikely for the turned-round pair
    assert ground_pairs(ids, star, ids, square, boxes, image, "right of", geo, topk=1)[0].image == 1
    # without geometry the two images tie on the phrases; a one-object image is never an answer
    nogeo = ground_pairs(ids, star, ids, square, boxes, image, "left of", None, topk=10)
    assert {h.image for h in nogeo} == {0, 1}
    # -inf is no candidate (a region that shows a relation is no part of a pair)
    masked = star.copy()
    masked[0] = -np.inf
    assert all(h.subject != 0 for h in ground_pairs(ids, masked, ids, square, boxes, image, "left of", geo, topk=20))
    # candidate subsets and empty inputs
    assert ground_pairs(np.array([4]), star[[4]], np.array([1]), square[[1]], boxes, image, "left of", geo) == []
    assert ground_pairs(np.zeros(0, np.int64), np.zeros(0), ids, square, boxes, image, "left of", geo) == []


def test_search_text_grounds_relational_queries(geo, tmp_path):
    """Through the index: the pair's union box, its two parts, the JSON form; relational='off' and
    a missing geometry model fall back to single regions."""
    from densecap.retrieval.index import ImageRecord, RegionIndex
    from densecap.retrieval.search import search_text
    from test_retrieval import _bow, _planted_index

    index, rm = _planted_index(tmp_path)
    # add an image with a red circle left of a blue square, and one with them the other way round
    vocab = rm.vocab
    recs = []
    for name, xs in (("left.jpg", (5, 60)), ("right.jpg", (60, 5))):
        caps = ["a red circle", "a blue square"]
        codes = np.stack([_bow(vocab, c) for c in caps])
        recs.append(ImageRecord(path=str(tmp_path / name), width=100, height=80,
                                boxes=np.array([[xs[0], 10, 20, 20], [xs[1], 12, 20, 20]], np.float32),
                                scores=np.array([0.9, 0.8], np.float32), captions=caps, codes=codes,
                                embeddings=rm.embed_regions(codes)))
    idx = RegionIndex.open(str(tmp_path / "idx"))
    idx.lock()
    idx.add_shard(recs)
    idx.unlock()
    index = RegionIndex.open(str(tmp_path / "idx"))
    q = "a red circle left of a blue square"
    for mode in ("exact", "fast"):
        res = search_text(index, rm, q, topk=3, mode=mode, geometry=geo)
        assert res.mode == f"{mode}+pairs"
        top = res.hits[0]
        assert top["image"].endswith("left.jpg") and top["box"] == [5.0, 10.0, 75.0, 22.0]
        assert top["subject"]["caption"] == "a red circle" and top["object"]["caption"] == "a blue square"
        assert top["caption"] == "a red circle left of a blue square"
        assert top["score"] == pytest.approx(top["subject_score"] + top["object_score"] + top["relation_score"])
        j = res.to_json()[0]
        assert j["subject"]["box"] == [5.0, 10.0, 20.0, 20.0] and j["object"]["box"] == [60.0, 12.0, 20.0, 20.0]
    # the geometry model saved in the index is found by default
    geo.save(str(tmp_path / "idx" / "relations.json"))
    assert search_text(index, rm, q, topk=3).hits[0]["image"].endswith("left.jpg")
    single = search_text(index, rm, q, topk=3, relational="off")
    assert single.mode == "exact" and "subject" not in single.hits[0]
    with pytest.raises(ValueError, match="relational must be one of"):
        search_text(index, rm, q, relational="sometimes")


def test_cli_fit_relations(synthetic_root, tmp_path, capsys):
    import os

    from densecap.retrieval.cli import main

    prepared = os.path.join(synthetic_root, "prepared")
    out = tmp_path / "rel.json"
    assert main(["fit-relations", "--data", prepared, "--output", str(out)]) == 0
    geo = RelationGeometry.load(str(out))
    assert geo.num_triples > 0 and set(geo.relations) <= {"above", "below", "left of", "next to", "right of"}
    assert "training accuracy" in capsys.readouterr().out
    assert main(["fit-relations", "--data", prepared]) == 2  # neither --index nor --output
    assert main(["fit-relations", "--data", prepared, "--index", str(tmp_path / "nope")]) == 1
    assert "no such index directory" in capsys.readouterr().err
