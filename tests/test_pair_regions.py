"""Pair regions: union boxes of detection pairs (MODEL.ROI_HEADS.PAIR_BOXES) and their composed
captions (MODEL.ROI_HEADS.PAIR_RELATIONS, densecap/modeling/pair_captions.py)."""
import numpy as np
import pytest
import torch

from densecap.data.tokenizer import Vocabulary, tokenize
from densecap.modeling import build_model
from densecap.modeling.pair_captions import compose_pair_captions, phrase_variants
from densecap.modeling.postprocess import pair_unions
from densecap.modeling.relation_geometry import RelationGeometry

from test_modeling import VOCAB, make_inputs, tiny_cfg
from test_pairs import _random_triples


@pytest.fixture(scope="module")
def geo():
    return RelationGeometry.fit(_random_triples(1500, 0))


def test_pair_unions():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [30, 0, 40, 10], [0, 50, 10, 60]], dtype=torch.float32)
    u, parts = pair_unions(boxes, 3)
    # boxes 0 and 1 overlap (IoU 0.68 > 0.5): one object, not paired; box 3 is beyond top 3
    assert parts.tolist() == [[0, 2], [1, 2]]
    assert u.tolist() == [[0, 0, 40, 10], [1, 0, 40, 11]]
    u, parts = pair_unions(boxes, 4)
    assert len(u) == 5 and parts.shape == (5, 2)
    for (i, j), b in zip(parts.tolist(), u.tolist()):
        assert b == [min(boxes[i, 0], boxes[j, 0]), min(boxes[i, 1], boxes[j, 1]),
                     max(boxes[i, 2], boxes[j, 2]), max(boxes[i, 3], boxes[j, 3])]
    for n in (0, 1):
        u, parts = pair_unions(boxes[:n], 5)
        assert u.shape == (0, 4) and parts.shape == (0, 2)


def test_phrase_variants():
    v = phrase_variants("a large striped red star")
    assert v[0] == "a large striped red star" and len(v) == 8
    assert {"a red star", "a striped star", "a large star", "a star"} <= set(v)
    assert "an orange circle" in phrase_variants("a small orange circle")  # the article agrees
    assert phrase_variants("red car") == ["red car", "car"]  # no article: none added
    assert phrase_variants("") == [] and phrase_variants("a") == []


class _PlantedLM:
    """score = -(number of positions where the candidate differs from the caption planted for
    the code's row) - length difference."""

    def __init__(self, vocab, planted):
        self.rows = [vocab.encode(tokenize(c)) for c in planted]

    def score(self, codes, tokens):
        out = []
        for c, t in zip(codes.tolist(), tokens.tolist()):
            ref = self.rows[int(c[0])]
            t = [x for x in t if x]
            out.append(-sum(a != b for a, b in zip(t, ref)) - abs(len(t) - len(ref)))
        return torch.tensor(out, dtype=torch.float32)


def test_compose_pair_captions_uses_parts_geometry_and_the_lm(geo):
    words = "a an large small striped red green star square left right of above below next to".split()
    vocab = Vocabulary(words)
    # part a (red star) left of part b (green square); the LM of region 0 prefers the short form
    # in one order, that of region 1 in the other
    lm = _PlantedLM(vocab, ["a red star left of a green square", "a green square right of a red star"])
    codes = torch.tensor([[0.0], [1.0]])
    parts = [("a large striped red star", "a small green square")] * 2
    boxes = torch.tensor([[[10, 10, 30, 30], [60, 12, 80, 32]]] * 2, dtype=torch.float32)  # xyxy
    rows, lls = compose_pair_captions(lm, vocab, geo, codes, parts, boxes, max_len=16)
    assert [vocab.decode_str(r) for r in rows] == ["a red star left of a green square", "a green square right of a red star"]
    assert lls == [0.0, 0.0]
    # geometry decides the relation: with the square above the star, "left of" is never chosen
    up = torch.tensor([[[10, 60, 30, 80], [12, 10, 32, 30]]] * 2, dtype=torch.float32)
    rows, _ = compose_pair_captions(lm, vocab, geo, codes, parts, up, max_len=16)
    assert all(" left of " not in vocab.decode_str(r) and " right of " not in vocab.decode_str(r) for r in rows)
    assert "below" in vocab.decode_str(rows[0])
    # too long for max_len: no candidate, empty row (the caller keeps the caption)
    rows, _ = compose_pair_captions(lm, vocab, geo, codes, parts, boxes, max_len=4)
    assert rows == [[], []]


def test_pair_boxes_add_union_regions_and_keep_the_detections(geo, tmp_path):
    vocab = Vocabulary(VOCAB.idx_to_token[-12:] + "left right of above below next to".split())
    torch.manual_seed(0)
    plain = build_model(tiny_cfg(**{"MODEL.CAPTION.MAX_TOKENS": 3}), vocab).eval()
    torch.nn.init.normal_(plain.roi_heads.box_deltas.weight, std=0.05)  # refinement moves boxes
    path = str(tmp_path / "relations.json")
    geo.save(path)
    paired = build_model(tiny_cfg(**{"MODEL.ROI_HEADS.PAIR_BOXES": 4, "MODEL.ROI_HEADS.PAIR_RELATIONS": path,
                                     "MODEL.CAPTION.MAX_TOKENS": 3}), vocab).eval()
    paired.load_state_dict(plain.state_dict())
    assert paired.roi_heads.pair_boxes == 4 and paired.pair_geometry is not None
    a, b = plain(make_inputs(2)), paired(make_inputs(2))
    added = exact_unions = 0
    for x, y in zip(a, b):
        xi, yi = x["instances"], y["instances"]
        assert not xi.has("pair_parts") and yi.pair_parts.shape == (len(yi), 2)
        # every plain detection is still there, with its score, and its caption unless it became
        # a pair region (a union repeated it); scores stay sorted
        for box, s, cap in zip(xi.pred_boxes, xi.scores, xi.pred_captions):
            hit = torch.nonzero((yi.pred_boxes - box).abs().sum(1) < 1e-4).flatten()
            assert len(hit) and torch.isclose(yi.scores[hit[0]], s)
            if yi.pair_parts[hit[0], 0] < 0:
                assert yi.pred_captions[hit[0]] == cap
        assert torch.all(yi.scores[:-1] >= yi.scores[1:])
        for k, (i, j) in enumerate(yi.pair_parts.tolist()):
            if i < 0:
                continue
            added += 1
            assert i != j and i < len(yi) and j < len(yi) and k not in (i, j)
            # a pair region's caption: a name of one part, a relation the geometry knows, a name of the other
            cap = yi.pred_captions[k]
            ca, cb = yi.pred_captions[i], yi.pred_captions[j]
            assert any(cap == f"{p} {r} {q}" for r in geo.relations
                       for p, q in [(pa, pb) for pa in phrase_variants(ca) for pb in phrase_variants(cb)]
                       + [(pb, pa) for pa in phrase_variants(ca) for pb in phrase_variants(cb)]), (cap, ca, cb)
            assert yi.pred_caption_tokens[k].tolist()[: len(cap.split())] == vocab.encode(cap.split())
            # an added union keeps the parts' union box (not refined again); a detection that a union
            # repeated keeps its own box
            (ax, ay, aw, ah), (bx, by, bw, bh) = yi.pred_boxes[i].tolist(), yi.pred_boxes[j].tolist()
            union = torch.tensor([min(ax, bx), min(ay, by), max(ax + aw, bx + bw) - min(ax, bx),
                                  max(ay + ah, by + bh) - min(ay, by)])
            exact_unions += bool(torch.allclose(yi.pred_boxes[k], union, atol=1e-3))
    assert added > 0 and exact_unions > 0


def test_pair_boxes_edge_cases(geo, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.ROI_HEADS.PAIR_BOXES": 4}), VOCAB).eval()
    assert model.pair_geometry is None  # union regions without composed captions
    model.roi_heads.score_thresh = 1.1  # no detection: no pair, well-formed empty output
    out = model(make_inputs(2))
    assert all(len(o["instances"]) == 0 and o["instances"].pair_parts.shape == (0, 2) for o in out)
    model.roi_heads.score_thresh = 0.0
    inputs = make_inputs(1)
    inputs[0]["given_boxes"] = torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 20.0, 20.0]])
    inst = model(inputs)[0]["instances"]  # given boxes: exactly these, never paired
    assert len(inst) == 2 and (inst.pair_parts == -1).all()
    model.roi_heads.detections_per_image = 2  # the cap holds with pairs added
    assert all(len(o["instances"]) <= 2 for o in model(make_inputs(2)))
    with pytest.raises(ValueError, match="PAIR_BOXES"):
        build_model(tiny_cfg(**{"MODEL.ROI_HEADS.PAIR_RELATIONS": str(tmp_path / "r.json")}), VOCAB)
    with pytest.raises(ValueError, match="nope.json"):
        build_model(tiny_cfg(**{"MODEL.ROI_HEADS.PAIR_BOXES": 2, "MODEL.ROI_HEADS.PAIR_RELATIONS": str(tmp_path / "nope.json")}), VOCAB)


def test_pair_score_scale_scales_only_the_added_unions():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.ROI_HEADS.PAIR_BOXES": 4}), VOCAB).eval()
    assert model.roi_heads.pair_score_scale == 1.0
    full = [o["instances"] for o in model(make_inputs(2))]
    model.roi_heads.pair_score_scale = 0.25
    scaled = [o["instances"] for o in model(make_inputs(2))]
    model.roi_heads.pair_boxes = 0
    plain = [o["instances"] for o in model(make_inputs(2))]  # the detections alone
    added = 0
    for p, a, b in zip(plain, full, scaled):
        assert len(a) == len(b) and torch.all(b.scores[:-1] >= b.scores[1:])
        for box, s in zip(b.pred_boxes, b.scores):
            det = torch.nonzero((p.pred_boxes - box).abs().sum(1) < 1e-4).flatten()
            if len(det):  # a detection keeps its score
                assert torch.isclose(s, p.scores[det[0]])
                continue
            added += 1  # an added union: its score times the scale
            hit = torch.nonzero((a.pred_boxes - box).abs().sum(1) < 1e-4).flatten()
            assert len(hit) and torch.isclose(s, a.scores[hit[0]] * 0.25)
    assert added > 0
