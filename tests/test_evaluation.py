"""Tests of densecap/evaluation: hand-computed APs with an injected scorer, real METEOR on small
cases, caption metrics against pycocoevalcap, the CLI end to end, and the edge cases.

AP arithmetic used below: AP = (1/100) * sum over t in {0.00 .. 0.99} of the max precision at
recall >= t. One true positive out of npos=2 at rank 1 reaches recall 0.5 -> the 51 points
0.00..0.50 get precision 1 -> AP 0.51 -> 51.0 (x100).
"""
import json
import math
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from densecap.data.tokenizer import Vocabulary
from densecap.evaluation import densecap_eval as de
from densecap.evaluation.densecap_eval import (
    IOU_THRESHOLDS,
    METEOR_THRESHOLDS,
    DenseCapEvaluator,
    ap_key,
    average_precision,
    evaluate_dense_captions,
    match_predictions,
    merge_gt_boxes,
)
from densecap.evaluation.meteor import JavaNotFoundError, MeteorError, MeteorScorer, find_java
from densecap.structures import Instances

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def exact_scorer(pairs):
    """Deterministic METEOR stand-in: 1 if the candidate equals one reference, else 0."""
    return [1.0 if c in refs else 0.0 for c, refs in pairs]


def table_scorer(table):
    return lambda pairs: [table.get(c, 0.0) for c, _ in pairs]


def gt(boxes, caps):
    return {"boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4), "captions": list(caps)}


def pr(boxes, scores, caps):
    return {"boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4), "scores": list(scores), "captions": list(caps)}


def ev(g, p, scorer=exact_scorer, **kw):
    return evaluate_dense_captions(g, p, scorer, **kw)


def all_aps(res, value):
    return all(math.isclose(v, value, abs_tol=1e-9) for v in res["ap"].values())


# ---------------------------------------------------------------------------------------------
# hand-built cases
# ---------------------------------------------------------------------------------------------
def test_perfect_predictions_map_100():
    b = [[0, 0, 10, 10], [100, 100, 20, 30], [300, 50, 40, 40]]
    res = ev({1: gt(b, ["a cat", "a dog", "a tree"])}, {1: pr(b, [0.9, 0.8, 0.7], ["a cat", "a dog", "a tree"])})
    assert res["map"] == pytest.approx(100.0) and res["detmap"] == pytest.approx(100.0)
    assert all_aps(res, 100.0)
    assert len(res["ap"]) == 35 and res["npos"] == 3 and res["num_predictions"] == 3
    assert set(res["ap"]) == {ap_key(a, m) for a in IOU_THRESHOLDS for m in METEOR_THRESHOLDS}
    assert "iou0.3_meteor-1" in res["ap"] and "iou0.7_meteor0.25" in res["ap"] and "iou0.5_meteor0" in res["ap"]


def test_disjoint_boxes_map_0():
    res = ev({1: gt([[0, 0, 10, 10]], ["a cat"])}, {1: pr([[50, 50, 10, 10], [70, 0, 5, 5]], [0.9, 0.8], ["a cat"] * 2)})
    assert res["map"] == 0.0 and res["detmap"] == 0.0 and all_aps(res, 0.0)


def test_merge_three_gt_boxes_pooled_references():
    a, b, c = [0, 0, 100, 100], [0, 0, 100, 95], [0, 0, 95, 100]  # pairwise IoU 0.95, 0.95, 0.905
    far = [500, 500, 50, 50]
    boxes = np.array([a, far, b, c], dtype=np.float64)
    xyxy = boxes.copy()
    xyxy[:, 2:] += xyxy[:, :2]
    merged, refs = merge_gt_boxes(xyxy, ["cat", "tree", "dog", "bird"])
    assert len(refs) == 2
    assert refs[0] == ["cat", "dog", "bird"] and refs[1] == ["tree"]
    np.testing.assert_allclose(merged[0], [0, 0, 295 / 3, 295 / 3])
    np.testing.assert_allclose(merged[1], [500, 500, 550, 550])
    # one prediction on the merged box whose caption is the 2nd pooled reference: a TP
    res = ev({7: gt(boxes, ["cat", "tree", "dog", "bird"])}, {7: pr([[0, 0, 295 / 3, 295 / 3]], [0.9], ["dog"])})
    assert res["npos"] == 2 and res["num_gt_regions"] == 4
    assert all_aps(res, 51.0)  # recall 0.5 at precision 1


def test_merge_is_not_transitive():
    # chain A~B, B~C, C~D (IoU 0.8 each), A!~C: B has the most matches -> {A,B,C}, then {D}
    boxes = np.array([[0, 0, 100, 100], [0, 0, 80, 100], [0, 0, 64, 100], [0, 0, 51.2, 100]], dtype=np.float64)
    xyxy = boxes.copy()
    xyxy[:, 2:] += xyxy[:, :2]
    merged, refs = merge_gt_boxes(xyxy, ["a", "b", "c", "d"])
    assert refs == [["a", "b", "c"], ["d"]]
    np.testing.assert_allclose(merged[0], [0, 0, (100 + 80 + 64) / 3, 100])


def test_unmatched_quirk_on_and_off():
    g = {1: gt([[0, 0, 10, 10], [100, 100, 10, 10]], ["first", "last"])}
    # p1 overlaps nothing (higher score), p2 sits exactly on the LAST merged GT with its caption
    p = {1: pr([[500, 500, 5, 5], [100, 100, 10, 10]], [0.9, 0.8], ["x", "last"])}
    on = ev(g, p, unmatched_quirk=True)
    off = ev(g, p, unmatched_quirk=False)
    assert on["unmatched_quirk"] is True and off["unmatched_quirk"] is False
    # quirk: p1 marks used[-1] = the last GT, so p2 is a duplicate -> no TP at all
    assert all_aps(on, 0.0)
    # without: p2 is a TP at rank 2 (recall 1/2, precision 1/2) -> 51 points x 0.5
    assert all_aps(off, 25.5)
    # the quirk only hits the LAST merged GT: on the first one p2 stays a TP
    p_first = {1: pr([[500, 500, 5, 5], [0, 0, 10, 10]], [0.9, 0.8], ["x", "first"])}
    assert all_aps(ev(g, p_first, unmatched_quirk=True), 25.5)


def test_match_predictions_details():
    merged = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=np.float64)  # two identical
    preds = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [100, 100, 110, 110], [20, 20, 30, 30]], dtype=np.float64)
    ok, iou, j = match_predictions(preds, merged, unmatched_quirk=True)
    assert j.tolist() == [0, 0, -1, 2]  # first GT on ties; -1 when nothing overlaps
    assert iou.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert ok.tolist() == [True, False, True, False]  # 3rd took used[-1] (GT 2) -> 4th is a duplicate
    ok2, _, _ = match_predictions(preds, merged, unmatched_quirk=False)
    assert ok2.tolist() == [True, False, False, True]


def test_meteor_exactly_at_threshold_is_strict():
    g = {1: gt([[0, 0, 10, 10]], ["ref"])}
    res = ev(g, {1: pr([[0, 0, 10, 10]], [0.5], ["x"])}, scorer=table_scorer({"x": 0.05}))
    for a in IOU_THRESHOLDS:
        assert res["ap"][ap_key(a, -1)] == pytest.approx(100.0)
        assert res["ap"][ap_key(a, 0)] == pytest.approx(100.0)  # 0.05 > 0
        for m in (0.05, 0.1, 0.15, 0.2, 0.25):
            assert res["ap"][ap_key(a, m)] == 0.0  # 0.05 > 0.05 is false
    assert res["detmap"] == pytest.approx(100.0)
    assert res["map"] == pytest.approx(100.0 / 6)


@pytest.mark.parametrize("w,expected", [(50, [1, 1, 1, 0, 0]), (30, [1, 0, 0, 0, 0]), (70, [1, 1, 1, 1, 1]), (69.9, [1, 1, 1, 1, 0])])
def test_iou_exactly_at_threshold_is_inclusive(w, expected):
    # GT 100x100, prediction w x 100 inside it: IoU = w / 100 exactly
    res = ev({1: gt([[0, 0, 100, 100]], ["c"])}, {1: pr([[0, 0, w, 100]], [0.5], ["c"])})
    got = [res["ap"][ap_key(a, -1)] / 100 for a in IOU_THRESHOLDS]
    assert got == pytest.approx(expected)
    assert res["detmap"] == pytest.approx(100 * np.mean(expected))


def test_recall_points():
    assert de.RECALL_POINTS.shape == (100,)
    assert de.RECALL_POINTS[0] == 0 and de.RECALL_POINTS[-1] == np.float32(0.99)
    np.testing.assert_array_equal(de.RECALL_POINTS, (np.arange(100) / 100).astype(np.float32))
    # npos 100: k correct predictions first -> recall k/100 reached exactly -> points 0..k/100
    for k, expected in ((1, 0.02), (3, 0.04), (20, 0.21), (50, 0.51), (99, 1.0), (100, 1.0)):
        tp = np.zeros(200, dtype=bool)
        tp[:k] = True
        assert average_precision(tp, 100) == pytest.approx(expected), k
    # max precision at recall >= t (interpolated): FP first, then TP: precision 1/2 at recall 1
    assert average_precision(np.array([False, True]), 1) == pytest.approx(0.5)
    assert average_precision(np.array([True, False, True]), 2) == pytest.approx((51 * 1 + 49 * 2 / 3) / 100)
    assert average_precision(np.zeros(0, dtype=bool), 5) == 0.0
    assert average_precision(np.array([True]), 0) == 0.0


def test_multiple_images_share_one_global_ranking():
    g = {1: gt([[0, 0, 10, 10]], ["cat"]), 2: gt([[0, 0, 10, 10]], ["dog"])}
    p = {
        1: pr([[0, 0, 10, 10]], [0.9], ["cat"]),  # TP, rank 2
        2: pr([[0, 0, 10, 10], [50, 50, 5, 5]], [0.95, 0.5], ["cow", "dog"]),  # rank 1 wrong words, rank 3 nothing
    }
    res = ev(g, p)
    # language: tp = [0, 1, 0], npos 2 -> precision 1/2 up to recall 1/2 -> 51 x 0.5
    assert res["map"] == pytest.approx(25.5)
    # detection (METEOR > -1): tp = [1, 1, 0] -> recall 1 at precision 1
    assert res["detmap"] == pytest.approx(100.0)
    # per-image averaging would give something else: image 1 alone is perfect
    assert ev({1: g[1]}, {1: p[1]})["map"] == pytest.approx(100.0)


def test_score_all_records_gives_identical_aps():
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "tree", "sky", "man"]
    g, p = {}, {}
    for i in range(6):
        gb = rng.uniform(0, 200, (8, 2))
        gb = np.concatenate([gb, rng.uniform(10, 80, (8, 2))], axis=1)
        g[i] = gt(gb, [words[k] for k in rng.integers(0, 5, 8)])
        pb = np.concatenate([gb + rng.normal(0, 8, gb.shape), rng.uniform(0, 200, (8, 4)) + [0, 0, 10, 10]])
        p[i] = pr(np.abs(pb), rng.random(16), [words[k] for k in rng.integers(0, 5, 16)])
    calls = []

    def counting(pairs):
        calls.append(len(pairs))
        return exact_scorer(pairs)

    a = ev(g, p, scorer=counting)
    b = ev(g, p, scorer=counting, score_all_records=True)
    assert a["ap"] == b["ap"] and 0 < a["map"] < 100
    assert calls[0] < calls[1]
    rec = ev(g, p, return_records=True)["records"]
    assert len(rec["score"]) == 96 and len(rec["candidate"]) == 96


def _literal_merge(xyxy, caps, thr=0.7):
    """Section 3 of the reference, line by line (zeroing rows and columns of D)."""
    from densecap.structures.boxes import iou_xyxy_np

    D = iou_xyxy_np(xyxy, xyxy)
    np.fill_diagonal(D, 1.0)
    out_boxes, out_refs = [], []
    while True:
        good = D >= thr
        c = good.sum(axis=0)
        j = int(np.argmax(c))
        if c[j] == 0:
            break
        grp = [i for i in range(len(caps)) if good[j][i]]
        D[grp, :] = 0
        D[:, grp] = 0
        out_boxes.append(xyxy[grp].mean(axis=0))
        out_refs.append([caps[i] for i in grp])
    return np.array(out_boxes).reshape(-1, 4), out_refs


def _literal_ap(tp, npos):
    """The Lua loop: FloatTensor cumsums, `for t=0,1,0.01`, max of prec masked by rec >= t."""
    tp = np.asarray(tp, dtype=np.float32)
    ctp = np.cumsum(tp, dtype=np.float32)
    cfp = np.cumsum(1 - tp, dtype=np.float32)
    rec = ctp / np.float32(npos)
    prec = ctp / (cfp + ctp)
    ap, n, t = 0.0, 0, 0.0
    while t <= 1:
        ap += float(np.max(prec.astype(np.float64) * (rec >= np.float32(t))))
        n += 1
        t += 0.01
    return ap / n


def test_vectorised_core_equals_literal_protocol():
    rng = np.random.default_rng(1)
    for trial in range(30):
        n = int(rng.integers(1, 25))
        base = rng.uniform(0, 100, (n, 2))
        wh = rng.uniform(5, 60, (n, 2))
        xyxy = np.concatenate([base, base + wh], axis=1)
        dup = rng.random(n) < 0.5  # many near-duplicates so that groups form
        xyxy[dup] = xyxy[rng.integers(0, n, dup.sum())] + rng.normal(0, 2, (dup.sum(), 4))
        xyxy[:, 2:] = np.maximum(xyxy[:, 2:], xyxy[:, :2] + 1)
        caps = [f"c{i}" for i in range(n)]
        m1, r1 = merge_gt_boxes(xyxy, caps)
        m2, r2 = _literal_merge(xyxy, caps)
        assert r1 == r2
        np.testing.assert_allclose(m1, m2)
    for trial in range(30):
        k, npos = int(rng.integers(1, 400)), int(rng.integers(1, 300))
        tp = rng.random(k) < rng.random()
        assert average_precision(tp, npos) == pytest.approx(_literal_ap(tp, npos), abs=1e-12)
    for npos in (100, 200, 300, 700):  # recall exactly at k/100 boundaries
        for k in range(0, npos + 1, max(1, npos // 50)):
            tp = np.r_[np.ones(k, bool), np.zeros(10, bool)]
            assert average_precision(tp, npos) == pytest.approx(_literal_ap(tp, npos), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------------------------
def test_prediction_for_image_without_gt_is_ignored_and_counted():
    g = {1: gt([[0, 0, 10, 10]], ["cat"])}
    p = {1: pr([[0, 0, 10, 10]], [0.9], ["cat"]), 99: pr([[0, 0, 10, 10]] * 3, [0.99, 0.98, 0.97], ["x"] * 3)}
    res = ev(g, p)
    assert res["map"] == pytest.approx(100.0)
    assert res["ignored_pred_images"] == 1 and res["ignored_predictions"] == 3 and res["num_predictions"] == 1


def test_gt_image_without_predictions_counts_toward_npos():
    g = {1: gt([[0, 0, 10, 10]], ["cat"]), 2: gt([[0, 0, 10, 10]], ["dog"])}
    res = ev(g, {1: pr([[0, 0, 10, 10]], [0.9], ["cat"])})
    assert res["npos"] == 2 and res["gt_images_without_predictions"] == 1
    assert all_aps(res, 51.0)
    res2 = ev(g, {1: pr([[0, 0, 10, 10]], [0.9], ["cat"]), 2: pr(np.zeros((0, 4)), [], [])})
    assert res2["ap"] == res["ap"] and res2["gt_images_without_predictions"] == 1


def test_gt_image_with_empty_region_list():
    g = {1: gt([[0, 0, 10, 10]], ["cat"]), 2: gt(np.zeros((0, 4)), [])}
    p = {1: pr([[0, 0, 10, 10]], [0.5], ["cat"]), 2: pr([[0, 0, 10, 10]], [0.9], ["cat"])}
    res = ev(g, p)  # image 2's prediction is a false positive at rank 1
    assert res["npos"] == 1
    assert all_aps(res, 50.0)


def test_empty_caption_scores_zero_but_is_a_detection():
    g = {1: gt([[0, 0, 10, 10]], ["cat"])}
    res = ev(g, {1: pr([[0, 0, 10, 10]], [0.9], [""])})
    assert res["empty_captions"] == 1
    assert res["detmap"] == pytest.approx(100.0) and res["map"] == 0.0
    res_none = ev(g, {1: pr([[0, 0, 10, 10]], [0.9], [None])})
    assert res_none["ap"] == res["ap"]


@pytest.mark.parametrize(
    "box,score,msg",
    [
        ([np.nan, 0, 10, 10], 0.5, "not finite"),
        ([0, 0, np.inf, 10], 0.5, "not finite"),
        ([10, 10, -5, 10], 0.5, "negative width/height"),
        ([0, 0, 10, 10], np.nan, "score 0 is not finite"),
    ],
)
def test_bad_prediction_boxes_raise_naming_the_image(box, score, msg):
    g = {"img42": gt([[0, 0, 10, 10]], ["cat"])}
    with pytest.raises(ValueError) as e:
        ev(g, {"img42": pr([box], [score], ["cat"])})
    assert "img42" in str(e.value) and msg in str(e.value)


def test_malformed_predictions_raise_naming_the_image():
    g = {5: gt([[0, 0, 10, 10]], ["cat"])}
    with pytest.raises(ValueError, match="image 5.*2 boxes, 1 scores"):
        ev(g, {5: pr([[0, 0, 1, 1], [0, 0, 2, 2]], [0.5], ["a", "b"])})
    with pytest.raises(ValueError, match=r"image 5.*shape \(N, 4\)"):
        ev(g, {5: {"boxes": [[0, 0, 1]], "scores": [1.0], "captions": ["a"]}})
    with pytest.raises(ValueError, match="image 5.*no 'scores'"):
        ev(g, {5: {"boxes": [[0, 0, 1, 1]], "captions": ["a"]}})


def test_bad_gt_regions_are_dropped_and_counted():
    g = {1: gt([[0, 0, 10, 10], [np.nan, 0, 5, 5], [0, 0, -3, 4], [20, 20, 0, 0]], ["cat", "x", "y", "zero"])}
    res = ev(g, {1: pr([[0, 0, 10, 10]], [0.9], ["cat"])})
    assert res["gt_regions_dropped"] == 2 and res["num_gt_regions"] == 2
    assert res["npos"] == 2  # the zero-size box is kept (and can never be matched)
    assert all_aps(res, 51.0)


def test_no_gt_at_all_gives_zero():
    res = ev({1: gt(np.zeros((0, 4)), [])}, {1: pr([[0, 0, 1, 1]], [0.5], ["a"])})
    assert res["npos"] == 0 and res["map"] == 0.0 and res["detmap"] == 0.0


# ---------------------------------------------------------------------------------------------
# the evaluator (model contract) and DDP gathering
# ---------------------------------------------------------------------------------------------
def _model_io(image_id, scale, gt_xywh, gt_tokens, pred_xywh, scores, pred_caps):
    xyxy = np.asarray(gt_xywh, dtype=np.float32).copy()
    xyxy[:, 2:] += xyxy[:, :2]
    inp = {
        "image_id": image_id,
        "scale": scale,
        "height": 200,
        "width": 300,
        "instances": Instances(
            (int(200 * scale), int(300 * scale)),
            gt_boxes=torch.from_numpy(xyxy * scale),
            gt_captions=torch.tensor(gt_tokens, dtype=torch.int64),
        ),
    }
    out = {
        "instances": Instances(
            (200, 300),
            pred_boxes=torch.tensor(pred_xywh, dtype=torch.float32),
            scores=torch.tensor(scores, dtype=torch.float32),
            pred_captions=list(pred_caps),
        )
    }
    return inp, out


def test_evaluator_process_with_gt_from_inputs():
    vocab = Vocabulary(["a", "cat", "dog", "tree"])
    a, c, d = (vocab.token_to_idx[w] for w in ("a", "cat", "dog"))
    inp1, out1 = _model_io(1, 0.5, [[10, 20, 40, 60], [150, 100, 50, 50]], [[a, c, 0], [d, 0, 0]],
                           [[10, 20, 40, 60], [150, 100, 50, 50]], [0.9, 0.8], ["a cat", "dog"])
    inp2, out2 = _model_io(2, 2.0, [[0, 0, 30, 30]], [[d, 0, 0]], [[200, 150, 10, 10]], [0.7], ["dog"])
    ev_ = DenseCapEvaluator(vocab=vocab, scorer=exact_scorer)
    ev_.process([inp1, inp2], [out1, out2])
    ev_.process([inp1], [out1])  # a repeated image counts once
    res = ev_.evaluate()
    # 3 GT boxes, 2 perfect TPs at ranks 1-2, one FP at rank 3: recall 2/3 at precision 1
    assert res["npos"] == 3 and res["num_predictions"] == 3
    assert res["map"] == pytest.approx(67.0) and res["detmap"] == pytest.approx(67.0)
    # explicit GT gives the same; quirk from the config
    from densecap.config import get_cfg

    gt_by_image = {1: gt([[10, 20, 40, 60], [150, 100, 50, 50]], ["a cat", "dog"]), 2: gt([[0, 0, 30, 30]], ["dog"]),
                   3: gt([[0, 0, 1, 1]], ["never processed"])}
    e2 = DenseCapEvaluator.from_config(get_cfg(), gt_by_image=gt_by_image, scorer=exact_scorer)
    e2.process([inp1, inp2], [out1, out2])
    r2 = e2.evaluate()
    assert r2["ap"] == res["ap"] and r2["num_images"] == 2 and r2["unmatched_quirk"] is True
    e2.reset()
    with pytest.raises(ValueError, match="no ground truth for image 1"):
        DenseCapEvaluator(scorer=exact_scorer).process([{"image_id": 1}], [out1])


def test_evaluator_with_gt_from_prepared_dataset(tmp_path):
    from densecap.data.dataset import DenseCapDataset
    from densecap.data.prepared import write_split

    vocab = Vocabulary(["a", "cat", "dog"])
    vocab.save(str(tmp_path / "vocab.json"))
    a, c, d = (vocab.token_to_idx[w] for w in ("a", "cat", "dog"))
    write_split(str(tmp_path), "val", image_ids=[5, 6], image_paths=["5.jpg", "6.jpg"], heights=[200, 200],
                widths=[300, 300], region_counts=[2, 1], region_ids=np.arange(3),
                boxes=np.array([[10.5, 20, 40, 60], [150, 100, 50, 50], [0, 0, 30, 30]], np.float32),
                captions=np.array([[a, c], [d, 0], [c, 0]], np.int32), caption_lengths=np.array([2, 1, 1], np.int16))
    ds = DenseCapDataset(str(tmp_path), "val")
    e = DenseCapEvaluator(dataset=ds, scorer=exact_scorer)
    out = _model_io(5, 1.0, [[0, 0, 1, 1]], [[a]], [[10.5, 20, 40, 60], [150, 100, 50, 50]], [0.9, 0.8],
                    ["a cat", "cat"])[1]
    e.process([{"image_id": 5}], [out])  # GT comes from the prepared split, not the inputs
    res = e.evaluate()
    assert res["num_images"] == 1 and res["npos"] == 2
    assert res["detmap"] == pytest.approx(100.0) and res["map"] == pytest.approx(51.0)


def test_frame_warning_for_720_scaled_predictions():
    from densecap.evaluation.io import frame_warning

    g = {i: gt([[100, 100, 900, 500]], ["x"]) for i in range(6)}
    scaled = {i: pr([[50, 50, 600, 300]], [0.5], ["x"]) for i in range(6)}
    same = {i: pr([[100, 100, 900, 500]], [0.5], ["x"]) for i in range(6)}
    assert "720" in frame_warning(g, scaled)
    assert frame_warning(g, same) is None


def test_evaluator_gathers_across_ranks(monkeypatch):
    vocab = Vocabulary(["cat", "dog"])
    c, d = vocab.token_to_idx["cat"], vocab.token_to_idx["dog"]
    io1 = _model_io(1, 1.0, [[0, 0, 10, 10]], [[c]], [[0, 0, 10, 10]], [0.9], ["cat"])
    io2 = _model_io(2, 1.0, [[0, 0, 10, 10]], [[d]], [[0, 0, 10, 10]], [0.8], ["dog"])
    other = DenseCapEvaluator(vocab=vocab, scorer=exact_scorer)
    other.process([io2[0], io1[0]], [io2[1], io1[1]])  # rank 1 also saw image 1 (sampler padding)

    import torch.distributed as dist

    class FakeDist:
        @staticmethod
        def get_world_size():
            return 2

        @staticmethod
        def get_rank():
            return 0

        @staticmethod
        def all_gather_object(out, obj):
            out[0] = obj
            out[1] = (other._gt, other._pred)

        @staticmethod
        def broadcast_object_list(box, src=0):
            assert src == 0 and box[0] is not None

    monkeypatch.setattr(de, "_dist", lambda: FakeDist)
    e = DenseCapEvaluator(vocab=vocab, scorer=exact_scorer)
    e.process([io1[0]], [io1[1]])
    res = e.evaluate()
    assert res["num_images"] == 2 and res["npos"] == 2 and res["num_predictions"] == 2
    assert res["map"] == pytest.approx(100.0)
    assert dist.is_available()


# ---------------------------------------------------------------------------------------------
# METEOR: Java handling and the real jar
# ---------------------------------------------------------------------------------------------
def _no_java_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.delenv("DENSECAP_JAVA", raising=False)


def test_no_java_gives_a_clear_error(monkeypatch, tmp_path):
    _no_java_env(monkeypatch, tmp_path)
    with pytest.raises(JavaNotFoundError, match="apt-get install default-jre-headless"):
        find_java()
    with pytest.raises(JavaNotFoundError, match="apt-get install default-jre-headless"):
        MeteorScorer()
    # the evaluator fails at construction, not after a long inference run
    with pytest.raises(JavaNotFoundError):
        DenseCapEvaluator(vocab=Vocabulary(["a"]))
    # an injected scorer needs no Java
    DenseCapEvaluator(vocab=Vocabulary(["a"]), scorer=exact_scorer)


def _fake_java(tmp_path, body):
    p = tmp_path / "java"
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return str(p)


def test_stalled_jvm_times_out_instead_of_hanging(tmp_path):
    m = MeteorScorer(java=_fake_java(tmp_path, "exec sleep 60"), timeout=1.0, startup_timeout=1.0)
    t = time.time()
    with pytest.raises(MeteorError, match="stalled"):
        m.score("a cat", ["a cat on a mat"])
    assert time.time() - t < 10
    with pytest.raises(MeteorError):  # stays broken, says why
        m.score("b", ["c"])


def test_dead_jvm_gives_a_clear_error(tmp_path):
    m = MeteorScorer(java=_fake_java(tmp_path, "echo 'Error: Unable to access jarfile' >&2; exit 3"), timeout=5)
    with pytest.raises(MeteorError, match=r"exited unexpectedly \(exit code 3\)[\s\S]*Unable to access jarfile"):
        m.score("a cat", ["a cat on a mat"])


@pytest.fixture(scope="module")
def meteor(java):
    m = MeteorScorer(java=java)
    yield m
    m.close()


@pytest.mark.slow
def test_real_meteor_small_case(meteor):
    pairs = [
        ("a man on a horse", ["a man riding a horse", "a dog on grass"]),
        ("white clouds in blue sky", ["white clouds in blue sky"]),
        ("the sky is blue", ["white clouds in blue sky"]),
        ("", ["anything"]),
        ("no refs", []),
        ("a man on a horse", ["a man riding a horse", "a dog on grass"]),  # duplicate pair
        ("a man on a horse", ["a man riding a horse", "a man riding a horse", "a dog on grass"]),
    ]
    before = meteor.num_jvm_requests
    s = meteor(pairs)
    assert s[0] == pytest.approx(0.3571361959045425, abs=1e-12)  # the jar's own answer
    assert s[1] == 1.0 and 0 < s[2] < 0.5 and s[3] == 0.0 and s[4] == 0.0
    assert s[5] == s[0] and s[6] == s[0]
    assert meteor.num_jvm_requests - before == 3  # empty / no-refs / duplicates never reach the JVM
    # batched scoring equals one-by-one scoring
    fresh = [("a black dog", ["a dog that is black"]), ("red car parked", ["a red car on the street", "car"])]
    batched = meteor(fresh)
    meteor._cache.clear()
    assert [meteor.score(c, r) for c, r in fresh] == batched
    # the full protocol with real METEOR: perfect predictions -> 100; words off -> lower
    g = {1: gt([[0, 0, 50, 50], [100, 0, 50, 50]], ["a man riding a horse", "white clouds in blue sky"])}
    res = evaluate_dense_captions(g, {1: pr([[0, 0, 50, 50], [100, 0, 50, 50]], [0.9, 0.8],
                                            ["a man riding a horse", "white clouds in blue sky"])}, meteor)
    assert res["map"] == pytest.approx(100.0)
    res = evaluate_dense_captions(g, {1: pr([[0, 0, 50, 50], [100, 0, 50, 50]], [0.9, 0.8],
                                            ["a man on a horse", "the sky is blue"])}, meteor)
    # METEOR 0.357 passes every threshold, 0 < s[2] < 0.25 only some: recall 1/2 or 1
    assert res["detmap"] == pytest.approx(100.0) and 50 <= res["map"] < 100


@pytest.mark.slow
def test_caption_metrics_equal_pycocoevalcap(meteor):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    from densecap.evaluation.caption_eval import caption_metrics
    from densecap.evaluation.io import tokenized

    gts = {
        1: ["A man riding a horse.", "A person on a brown horse", "Man rides horse on a beach"],
        2: ["Two dogs play in the snow!", "dogs playing in snow"],
        3: ["A red bus on the street", "A double-decker bus drives down the road"],
        4: ["A plate of food with broccoli", "Food on a white plate"],
    }
    res = {1: "a man riding a horse on the beach", 2: "two dogs in the snow", 3: "a red bus", 4: "a white plate of food"}
    ours = caption_metrics(gts, res, meteor=meteor)
    g = {k: [tokenized(s) for s in v] for k, v in gts.items()}
    r = {k: [tokenized(v)] for k, v in res.items()}
    bleu, _ = Bleu(4).compute_score(g, r, verbose=0)
    m = Meteor()
    try:
        met, _ = m.compute_score(g, r)
    finally:
        del m
    assert [ours["bleu1"], ours["bleu2"], ours["bleu3"], ours["bleu4"]] == bleu
    assert ours["meteor"] == met
    assert ours["rougeL"] == Rouge().compute_score(g, r)[0]
    assert ours["cider"] == Cider().compute_score(g, r)[0]
    assert set(ours) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider"}
    assert 0 < ours["meteor"] < 1 and ours["cider"] > 0


# ---------------------------------------------------------------------------------------------
# CLI end to end
# ---------------------------------------------------------------------------------------------
def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def _vg_files(tmp_path):
    regions = [
        {"id": 11, "regions": [
            {"x": 10, "y": 10, "width": 50, "height": 40, "phrase": "A Man riding a zebra."},
            {"x": 200, "y": 100, "width": 60, "height": 60, "phrase": "white cloud"},
            {"x": 0, "y": 0, "width": 5, "height": 5, "phrase": " ".join(["word"] * 16)},  # too long
        ]},
        {"id": 12, "regions": [{"x": 5, "y": 5, "width": 100, "height": 100, "phrase": "red car"}]},
        {"id": 13, "regions": [{"x": 5, "y": 5, "width": 10, "height": 10, "phrase": "not in split"}]},
    ]
    preds = {"results": [
        {"img_name": "11.jpg", "boxes": [[10, 10, 50, 40], [200, 100, 60, 60]], "scores": [0.9, 0.8],
         "captions": ["a man riding a <UNK>", "white cloud"]},
        {"image_id": 12, "boxes": [[5, 5, 100, 100]], "scores": [0.7], "captions": ["red car"]},
        {"image_id": "999", "boxes": [[5, 5, 100, 100]], "scores": [0.95], "captions": ["red car"]},
    ]}
    vocab = tmp_path / "vocab.json"
    Vocabulary(["a", "man", "riding", "white", "cloud", "red", "car", "word"]).save(str(vocab))
    return (_write(tmp_path / "region_descriptions.json", regions), _write(tmp_path / "results.json", preds),
            str(vocab), _write(tmp_path / "splits.json", {"train": [13], "val": [], "test": [11, 12]}))


def _import_cli():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import evaluate as cli
    finally:
        sys.path.pop(0)
    return cli


@pytest.mark.slow
def test_cli_dense_end_to_end(tmp_path, monkeypatch, capsys, meteor):
    """tools/evaluate.py main() with real METEOR (the module's JVM, to keep the test fast)."""
    import densecap.evaluation.meteor as meteor_mod

    class Shared:
        def __init__(self, **kw):
            pass

        def __call__(self, pairs):
            return meteor(pairs)

        def close(self):
            pass

    monkeypatch.setattr(meteor_mod, "MeteorScorer", Shared)
    cli = _import_cli()
    gt_path, pred_path, vocab, splits = _vg_files(tmp_path)
    out = tmp_path / "metrics.json"
    rc = cli.main(["--gt", gt_path, "--pred", pred_path, "--vocab", vocab, "--split-file", splits,
                   "--split", "test", "--output", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["map"] == pytest.approx(100.0) and m["detmap"] == pytest.approx(100.0)
    assert len(m["ap"]) == 35 and m["ap"]["iou0.3_meteor-1"] == pytest.approx(100.0)
    assert m["num_images"] == 2 and m["npos"] == 3 and m["gt_regions_too_long"] == 1
    assert m["ignored_pred_images"] == 1
    assert "mAP 100.000" in stdout and "IoU >=" in stdout
    # a wrong caption on image 12 lowers the language APs only
    preds = json.loads(open(pred_path).read())
    preds["results"][1]["captions"] = ["blue sky"]
    pred2 = _write(tmp_path / "results2.json", preds)
    assert cli.main(["--gt", gt_path, "--pred", pred2, "--vocab", vocab, "--split-file", splits,
                     "--split", "test", "--output", str(out), "-q"]) == 0
    m2 = json.loads(out.read_text())
    assert m2["detmap"] == pytest.approx(100.0)
    assert m2["map"] == pytest.approx(67.0)  # 2 of 3 GT found with the right words, at ranks 1-2


@pytest.mark.slow
def test_cli_runs_as_a_script():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "evaluate.py"), "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--no-unmatched-quirk" in r.stdout and "--task" in r.stdout


def test_cli_dense_quirk_switch_and_errors(tmp_path, monkeypatch, capsys):
    cli = _import_cli()

    class Fake:
        def __init__(self, **kw):
            pass

        __call__ = staticmethod(exact_scorer)

        def close(self):
            pass

    import densecap.evaluation.meteor as meteor_mod

    monkeypatch.setattr(meteor_mod, "MeteorScorer", Fake)
    regions = [{"id": 1, "regions": [{"x": 0, "y": 0, "width": 10, "height": 10, "phrase": "first"},
                                     {"x": 100, "y": 100, "width": 10, "height": 10, "phrase": "last"}]}]
    preds = [{"image_id": 1, "boxes": [[500, 500, 5, 5], [100, 100, 10, 10]], "scores": [0.9, 0.8],
              "captions": ["x", "last"]}]
    g, p = _write(tmp_path / "gt.json", regions), _write(tmp_path / "p.json", preds)
    out_on, out_off = tmp_path / "on.json", tmp_path / "off.json"
    assert cli.main(["--gt", g, "--pred", p, "--output", str(out_on), "-q"]) == 0
    assert cli.main(["--gt", g, "--pred", p, "--no-unmatched-quirk", "--output", str(out_off), "-q"]) == 0
    assert json.loads(out_on.read_text())["map"] == 0.0
    assert json.loads(out_off.read_text())["map"] == pytest.approx(25.5)
    # a NaN box: a clean error naming the image, exit code 1
    bad = _write(tmp_path / "bad.json", [{"image_id": 1, "boxes": [[0, 0, None, 1]], "scores": [0.5], "captions": ["a"]}])
    capsys.readouterr()
    assert cli.main(["--gt", g, "--pred", bad, "-q"]) == 1
    assert "image 1" in capsys.readouterr().err
    # no overlap between prediction and GT ids: says so
    other = _write(tmp_path / "other.json", [{"image_id": 5, "boxes": [], "scores": [], "captions": []}])
    assert cli.main(["--gt", g, "--pred", other, "-q"]) == 1
    assert "image ids must match" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_caption_end_to_end(tmp_path, monkeypatch, meteor):
    cli = _import_cli()
    from densecap.evaluation.caption_eval import caption_metrics
    import densecap.evaluation.meteor as meteor_mod

    class Shared:  # reuse the module's JVM
        def __init__(self, **kw):
            pass

        def corpus_score(self, pairs):
            return meteor.corpus_score(pairs)

        def close(self):
            pass

    monkeypatch.setattr(meteor_mod, "MeteorScorer", Shared)
    karpathy = {"images": [
        {"filename": "COCO_val2014_000000000042.jpg", "imgid": 0, "cocoid": 42, "split": "test",
         "sentences": [{"raw": "A man riding a horse.", "tokens": ["a", "man", "riding", "a", "horse"]},
                       {"raw": "A person on a horse"}]},
        {"filename": "COCO_val2014_000000000077.jpg", "imgid": 1, "cocoid": 77, "split": "test",
         "sentences": [{"raw": "Two dogs in the snow"}, {"raw": "dogs playing in snow"}]},
        {"filename": "COCO_train2014_000000000005.jpg", "imgid": 2, "cocoid": 5, "split": "train",
         "sentences": [{"raw": "a cat"}]},
    ]}
    g = _write(tmp_path / "captions.json", karpathy)
    coco = _write(tmp_path / "coco.json", [{"image_id": 42, "caption": "A man on a horse"},
                                            {"image_id": 77, "caption": "two dogs in snow"},
                                            {"image_id": 123456, "caption": "unknown image"}])
    infer = _write(tmp_path / "results.json", {"results": [
        {"img_name": "COCO_val2014_000000000042.jpg", "image_caption": "A man on a horse", "boxes": []},
        {"image_id": "COCO_val2014_000000000077", "image_caption": "two dogs in snow"}]})
    out1, out2 = tmp_path / "m1.json", tmp_path / "m2.json"
    assert cli.main(["--task", "caption", "--gt", g, "--pred", coco, "--split", "test", "--output", str(out1), "-q"]) == 0
    assert cli.main(["--task", "caption", "--gt", g, "--pred", infer, "--split", "test", "--output", str(out2), "-q"]) == 0
    m1, m2 = json.loads(out1.read_text()), json.loads(out2.read_text())
    expected = caption_metrics({0: ["A man riding a horse.", "A person on a horse"],
                                1: ["Two dogs in the snow", "dogs playing in snow"]},
                               {0: "A man on a horse", 1: "two dogs in snow"}, meteor=meteor)
    for k in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider"):
        assert m1[k] == expected[k] == m2[k], k
    assert m1["num_images"] == 2 and m1["ignored_predictions"] == 1 and m2["ignored_predictions"] == 0


def test_reading_helpers(tmp_path):
    from densecap.evaluation.io import image_key, parse_vg_regions, read_dense_predictions

    assert image_key(5) == 5 and image_key("5") == 5 and image_key("VG_100K/123.jpg") == 123
    assert image_key("abc.png") == "abc"
    vocab = Vocabulary(["a", "cat"])
    entries = [{"id": 1, "regions": [{"x": 0, "y": 0, "width": 3, "height": 4, "phrase": "A cat, sleeping!"},
                                     {"x": 0, "y": 0, "width": 3, "height": 4, "phrase": "a a a a"}]},
               {"id": 2, "regions": [{"x": 0, "y": 0, "width": 3, "height": 4, "phrase": "a a a a"}]},
               {"id": 3, "regions": []}]
    g, rep = parse_vg_regions(entries, vocab=vocab, max_tokens=3)
    assert list(g) == [1] and g[1]["captions"] == ["a cat <UNK>"]
    assert rep["gt_regions_too_long"] == 2 and rep["gt_images_empty"] == 2
    g2, _ = parse_vg_regions(entries)  # no vocab: tokenised, nothing dropped
    assert g2[1]["captions"] == ["a cat sleeping", "a a a a"] and list(g2) == [1, 2]
    g3, rep3 = parse_vg_regions(entries, image_ids=[2, 1, 77], max_images=1)
    assert list(g3) == [2] and rep3["split_images_missing_from_gt"] == 1
    dup = _write(tmp_path / "dup.json", {"results": [{"image_id": 1, "boxes": [], "scores": [], "captions": []},
                                                     {"img_name": "1.jpg", "boxes": [], "scores": [], "captions": []}]})
    with pytest.raises(ValueError, match="image 1 appears more than once"):
        read_dense_predictions(dup)


def test_every_evaluator_follows_the_one_protocol():
    """reset / process(inputs, outputs) / evaluate (detectron2's DatasetEvaluator); reset forgets."""
    from densecap.evaluation import DatasetEvaluator, DatasetEvaluators
    from densecap.evaluation.attention_grounding import AttentionGrounding, ReferenceAttentionGrounding
    from densecap.evaluation.image_caption_eval import ImageCaptionEvaluator
    from densecap.evaluation.region_accuracy import RegionCaptionAccuracy

    for cls in (DenseCapEvaluator, RegionCaptionAccuracy, ImageCaptionEvaluator, AttentionGrounding, ReferenceAttentionGrounding):
        assert issubclass(cls, DatasetEvaluator), cls
        for method in ("reset", "process", "evaluate"):
            assert getattr(cls, method) is not getattr(DatasetEvaluator, method), (cls, method)
    ev = ImageCaptionEvaluator()
    ev.process([{"gt_captions": ["a red circle"], "image_id": 1}], [{"image_caption": "a red circle", "image_caption_logprob": -1.0}])
    assert len(ev.rows) == 1
    both = DatasetEvaluators({"captions": ev, "grounding": AttentionGrounding(Vocabulary(["a"]))})
    both.reset()
    assert ev.rows == []
    with pytest.raises(ValueError, match="no image was captioned"):
        both.evaluate()
    assert DatasetEvaluators({"grounding": both.evaluators["grounding"]}).evaluate() == {"grounding": {"num_words": 0}}

