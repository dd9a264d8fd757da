"""The evaluator's settings that reproduce the original Lua run exactly: Torch7's sort order on
tied scores (default) vs a stable order, FloatTensor (default) vs DoubleTensor arithmetic,
empty-GT images as false positives (default) or ignored, and the original's integer GT boxes.

METEOR is injected (a table of scores), so these tests need no Java.
"""
import json

import numpy as np
import pytest

from densecap.evaluation import densecap_eval as de
from densecap.evaluation.densecap_eval import (
    RECALL_POINTS_DOUBLE,
    ap_key,
    average_precision,
    evaluate_dense_captions,
    lua_round_gt_boxes,
)
from densecap.utils.torch7_sort import (
    argsort_descending,
    torch_sort_descending,
    torch_sort_descending_literal,
)


def exact_scorer(pairs):
    return [1.0 if c in refs else 0.0 for c, refs in pairs]


def gt(boxes, caps, **kw):
    return {"boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4), "captions": list(caps), **kw}


def pr(boxes, scores, caps):
    return {"boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4), "scores": list(scores), "captions": list(caps)}


# ---------------------------------------------------------------------------------------------
# Torch7's torch.sort(x, 1, true)
# ---------------------------------------------------------------------------------------------
def one_based(perm):
    return (np.asarray(perm) + 1).tolist()


def test_twelve_equal_values():
    # n = 12 > M_SMALL + 1, so one partition of [0, 11] (0-based positions, idx = 0..11):
    #   P = 11 >> 1 = 5; swap(5, 1) -> idx [0 5 2 3 4 1 6 7 8 9 10 11]; the three median-of-three
    #   tests compare equal values with '<': no swap. piv = a[0], i = 1, j = 11.
    #   Every a[i] > piv and a[j] < piv is false, so i and j stop at once each round:
    #   swaps (2,10) (3,9) (4,8) (5,7), then i = j = 6 (not j < i: swap(6,6)), then i = 7, j = 5
    #   stop -> idx [0 5 10 9 8 7 6 1 4 3 2 11]; swap(L=0, j=5) -> [7 5 10 9 8 0 6 1 4 3 2 11].
    #   Subfiles [0,4] and [7,11] have 5 elements each: small, done. The insertion sort moves
    #   nothing (no a[i] < a[i+1]).
    expected = [8, 6, 11, 10, 9, 1, 7, 2, 5, 4, 3, 12]
    assert one_based(torch_sort_descending_literal([0.5] * 12)) == expected
    assert one_based(torch_sort_descending([0.5] * 12)) == expected
    assert one_based(argsort_descending([0.5] * 12)) == expected
    assert one_based(argsort_descending([0.5] * 12, stable=True)) == list(range(1, 13))


def test_eleven_equal_values_are_not_partitioned():
    # elements - 1 = 10 <= M_SMALL: no partition; the (stable) insertion sort keeps input order
    assert one_based(torch_sort_descending([1.0] * 11)) == list(range(1, 12))


def test_two_tie_groups():
    # a = [2 1 2 1 2 1 2 1 2 1 2 1] (value 2 at even positions)
    #   P = 5: swap(5,1) swaps two 1s (idx [0 5 2 3 4 1 6 7 8 9 10 11]); a[1] < a[11]: 1 < 1 no;
    #   a[0] < a[11]: no; a[1] < a[0]: 1 < 2 yes -> swap(1,0): idx [5 0 2 3 ...], a [1 2 2 1 ...].
    #   piv = 1. Round 1: i skips a[2] = 2 > 1, stops at 3; j stops at 10 (a = 2 is not < 1): swap.
    #   Round 2: i skips 4, stops at 5; j stops at 9: swap (two 1s). Round 3: i skips 6, stops
    #   at 7; j stops at 8: swap. Round 4: i stops at 8, j at 7: j < i. swap(0, 7).
    #   -> values [2 2 2 2 2 1 2 1 1 1 1 1], idx [8 0 2 10 4 9 6 5 7 1 3 11]; subfiles [0,6] and
    #   [8,11] are small. The stable insertion sort then puts the 2s first in that order.
    x = [2, 1] * 6
    expected = [9, 1, 3, 11, 5, 7, 10, 6, 8, 2, 4, 12]
    assert one_based(torch_sort_descending_literal(x)) == expected
    assert one_based(torch_sort_descending(x)) == expected
    assert one_based(argsort_descending(x, stable=True)) == [1, 3, 5, 7, 9, 11, 2, 4, 6, 8, 10, 12]


def test_distinct_values_sort_plainly():
    x = np.random.default_rng(0).permutation(50).astype(float)
    np.testing.assert_array_equal(torch_sort_descending(x), np.argsort(-x))
    assert torch_sort_descending([]).tolist() == [] and torch_sort_descending([3.0]).tolist() == [0]


@pytest.mark.parametrize("seed", range(4))
def test_fast_port_equals_literal_port(seed):
    rng = np.random.default_rng(seed)
    for trial in range(60):
        n = int(rng.integers(0, 40)) if trial < 40 else int(rng.integers(40, 1500))
        k = int(rng.integers(1, max(2, n)))
        x = rng.integers(0, k, size=n) / 8.0
        if trial % 3 == 0:
            x = np.sort(x)[::-1].copy() if trial % 2 else np.sort(x)  # presorted inputs
        lit = torch_sort_descending_literal(x)
        fast = torch_sort_descending(x)
        np.testing.assert_array_equal(fast, lit)
        assert (np.diff(x[fast]) <= 0).all()


# ---------------------------------------------------------------------------------------------
# tied scores in the evaluation
# ---------------------------------------------------------------------------------------------
def test_global_ranking_ties_follow_torch_sort():
    # 12 images, one GT box and one prediction each, all scores equal. Only image 7 (0-based)
    # is found. torch.sort ranks record 7 first (see test_twelve_equal_values): precision 1 at
    # recall 1/12 >= 0.08 -> 9 recall points -> AP 9. Stable order ranks it 8th: 9 * 1/8.
    g = {i: gt([[0, 0, 10, 10]], ["cat"]) for i in range(12)}
    p = {i: pr([[0, 0, 10, 10] if i == 7 else [50, 50, 10, 10]], [0.5], ["cat"]) for i in range(12)}
    torch_res = evaluate_dense_captions(g, p, exact_scorer)
    stable_res = evaluate_dense_captions(g, p, exact_scorer, stable_sort=True)
    assert torch_res["detmap"] == pytest.approx(9.0) and torch_res["map"] == pytest.approx(9.0)
    assert stable_res["detmap"] == pytest.approx(9.0 / 8) and stable_res["map"] == pytest.approx(9.0 / 8)
    assert torch_res["stable_sort"] is False and stable_res["stable_sort"] is True


def test_within_image_ties_decide_the_matching():
    # One GT box, 12 identical predicted boxes with equal scores; only prediction 7 has the
    # right caption. Stable: prediction 0 takes the GT (wrong words) and is ranked first
    # globally: detection AP 100, language APs 0. torch.sort: the image's order is
    # [7 5 10 9 8 0 6 1 4 3 2 11], so prediction 7 takes the GT; these 12 records (equal scores)
    # are ranked globally by the same permutation, [7 5 10 ...] of positions, i.e. predictions
    # [1 0 2 3 4 7 6 5 8 9 10 11]: prediction 7 is 6th -> precision 1/6 at recall 1, every AP 100/6.
    g = {1: gt([[0, 0, 10, 10]], ["cat"])}
    caps = ["cat" if i == 7 else "dog" for i in range(12)]
    p = {1: pr([[0, 0, 10, 10]] * 12, [0.5] * 12, caps)}
    stable_res = evaluate_dense_captions(g, p, exact_scorer, stable_sort=True)
    assert stable_res["detmap"] == pytest.approx(100.0) and stable_res["map"] == 0.0
    torch_res = evaluate_dense_captions(g, p, exact_scorer)
    assert torch_res["detmap"] == pytest.approx(100.0 / 6) and torch_res["map"] == pytest.approx(100.0 / 6)


# ---------------------------------------------------------------------------------------------
# FloatTensor vs DoubleTensor
# ---------------------------------------------------------------------------------------------
def test_recall_points_as_the_lua_loop_accumulates_them():
    # t = t + 0.01 in double: 0.03 is exact, the 7th point is 0.060000000000000005, the 51st
    # 0.5000000000000002; 83 of the 100 points lie above k/100 (k = 6 and 18..99)
    assert RECALL_POINTS_DOUBLE[3] == 0.03 and RECALL_POINTS_DOUBLE[6] == 0.060000000000000005
    assert RECALL_POINTS_DOUBLE[50] == 0.5000000000000002
    assert sum(RECALL_POINTS_DOUBLE[k] > k / 100 for k in range(100)) == 83
    np.testing.assert_array_equal(RECALL_POINTS_DOUBLE.astype(np.float32), de.RECALL_POINTS)


def test_recall_exactly_on_a_point_float_vs_double():
    # 6 true positives first, npos = 100: recall 6/100 = 0.06. Float: float32(0.06) >=
    # float32(0.060000000000000005) (the same float32) -> points 0.00..0.06 reached, AP 7/100.
    # Double: 0.06 < 0.060000000000000005 -> only 0.00..0.05, AP 6/100.
    tp = np.array([True] * 6 + [False])
    assert average_precision(tp, 100) == pytest.approx(0.07, abs=1e-15)
    assert average_precision(tp, 100, lua_tensor_type="double") == pytest.approx(0.06, abs=1e-15)
    # recall 3/100 = 0.03 equals the accumulated 0.01 + 0.01 + 0.01 in double too: no difference
    assert average_precision(tp[3:], 100) == average_precision(tp[3:], 100, lua_tensor_type="double") == 0.04
    with pytest.raises(ValueError, match="lua_tensor_type"):
        average_precision(tp, 100, lua_tensor_type="half")


def test_precision_in_float32_vs_float64():
    # TP, FP, TP with npos = 2: recall 0.5 at rank 1 (precision 1), 1 at rank 3 (precision 2/3).
    # Float: 51 points (0.00..0.50) at 1, 49 at float32(2/3) = 0.666666686534881591796875.
    # Double: the 51st point is 0.5000000000000002 > 0.5: 50 points at 1, 50 at 2/3.
    tp = np.array([True, False, True])
    assert average_precision(tp, 2) == pytest.approx((51 + 49 * float(np.float32(2) / np.float32(3))) / 100, abs=1e-15)
    assert average_precision(tp, 2) != pytest.approx((51 + 49 * 2 / 3) / 100, abs=1e-9)
    assert average_precision(tp, 2, lua_tensor_type="double") == pytest.approx((50 + 50 * 2 / 3) / 100, abs=1e-15)


def test_tensor_type_in_the_full_evaluation():
    # 100 GT boxes in one image, 6 found (right words) at the top: every AP is 7 (float) / 6 (double)
    boxes = [[20 * i, 0, 10, 10] for i in range(100)]
    g = {1: gt(boxes, ["cat"] * 100)}
    p = {1: pr(boxes[:6] + [[5000, 0, 10, 10]], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], ["cat"] * 7)}
    f = evaluate_dense_captions(g, p, exact_scorer)
    d = evaluate_dense_captions(g, p, exact_scorer, lua_tensor_type="double")
    assert f["map"] == pytest.approx(7.0) and f["detmap"] == pytest.approx(7.0)
    assert d["map"] == pytest.approx(6.0) and d["detmap"] == pytest.approx(6.0)
    assert f["lua_tensor_type"] == "float" and d["lua_tensor_type"] == "double"


# ---------------------------------------------------------------------------------------------
# empty-GT images
# ---------------------------------------------------------------------------------------------
def test_empty_gt_images_fp_or_ignore():
    g = {1: gt([[0, 0, 10, 10]], ["cat"]), 2: gt(np.zeros((0, 4)), []), 3: gt(np.zeros((0, 4)), [])}
    p = {1: pr([[0, 0, 10, 10]], [0.5], ["cat"]), 2: pr([[0, 0, 10, 10]] * 2, [0.9, 0.8], ["cat"] * 2)}
    fp = evaluate_dense_captions(g, p, exact_scorer)
    # ranks: FP, FP, TP -> precision 1/3 at recall 1 -> every AP 100/3
    assert fp["map"] == pytest.approx(100 / 3) and fp["detmap"] == pytest.approx(100 / 3)
    assert fp["empty_gt_images"] == 2 and fp["empty_gt_predictions"] == 2 and fp["num_predictions"] == 3
    ign = evaluate_dense_captions(g, p, exact_scorer, empty_gt="ignore")
    assert ign["map"] == pytest.approx(100.0) and ign["num_predictions"] == 1
    assert ign["empty_gt_images"] == 2 and ign["empty_gt_predictions"] == 2 and ign["empty_gt"] == "ignore"
    assert "GT images without regions: 2, with 2 predictions (false positives)" in de.format_results(fp)
    with pytest.raises(ValueError, match="empty_gt"):
        evaluate_dense_captions(g, p, exact_scorer, empty_gt="drop")


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture
def fake_meteor(monkeypatch):
    import densecap.evaluation.meteor as meteor_mod

    class Fake:
        def __init__(self, **kw):
            pass

        __call__ = staticmethod(exact_scorer)

        def close(self):
            pass

    monkeypatch.setattr(meteor_mod, "MeteorScorer", Fake)


def _cli():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "evaluate.py")
    spec = importlib.util.spec_from_file_location("evaluate_cli_lua", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_empty_gt_and_absent_images(tmp_path, fake_meteor, capsys, caplog):
    regions = [{"id": 1, "regions": [{"x": 0, "y": 0, "width": 10, "height": 10, "phrase": "cat"}]},
               {"id": 2, "regions": []}]
    preds = [{"image_id": 1, "boxes": [[0, 0, 10, 10]], "scores": [0.5], "captions": ["cat"]},
             {"image_id": 2, "boxes": [[0, 0, 10, 10]], "scores": [0.9], "captions": ["cat"]},
             {"image_id": 77, "boxes": [[0, 0, 10, 10]], "scores": [0.99], "captions": ["cat"]}]
    g, p = _write(tmp_path / "gt.json", regions), _write(tmp_path / "p.json", preds)
    cli = _cli()
    out_fp, out_ign = tmp_path / "fp.json", tmp_path / "ign.json"
    with caplog.at_level("WARNING"):
        assert cli.main(["--gt", g, "--pred", p, "--output", str(out_fp)]) == 0
    printed = capsys.readouterr().out
    assert "GT images without regions: 1, with 1 predictions (false positives)" in printed
    assert "[77]" in caplog.text  # the image absent from the GT is named, and ignored
    m = json.loads(out_fp.read_text())
    assert m["map"] == pytest.approx(50.0) and m["empty_gt_images"] == 1 and m["empty_gt_predictions"] == 1
    assert m["ignored_pred_images"] == 1 and m["ignored_predictions"] == 1
    assert cli.main(["--gt", g, "--pred", p, "--empty-gt", "ignore", "--output", str(out_ign), "-q"]) == 0
    m2 = json.loads(out_ign.read_text())
    assert m2["map"] == pytest.approx(100.0) and m2["empty_gt"] == "ignore" and m2["gt_images_empty"] == 1


# ---------------------------------------------------------------------------------------------
# the original's GT boxes
# ---------------------------------------------------------------------------------------------
def test_lua_round_gt_boxes_by_hand():
    # 720 x 720 image (scale 1). [10, 20, 20, 21]: x' = 10, y' = 20, w' = 20, h' = 21;
    # stored [10 + 10, 20 + 10, 20, 21]; back: x1 = 20 - (19 / 2 = 9) = 11, width 2*9+1 = 19;
    # y1 = 30 - 10 = 20, height 21 (odd: unchanged).
    np.testing.assert_array_equal(lua_round_gt_boxes([[10, 20, 20, 21]], 720, 720), [[11, 20, 19, 21]])
    # x = 0 is below the 1-based frame: clamped to x' = 1; [1 + 5, ., 10, .] -> x1 = 6 - 4 = 2, width 9
    np.testing.assert_array_equal(lua_round_gt_boxes([[0, 0, 10, 10]], 720, 720), [[2, 2, 9, 9]])
    # past the right edge: x' + w' > 720 -> w' = 720 - 700 = 20 -> [710, ...] -> x1 = 701, width 19
    np.testing.assert_array_equal(lua_round_gt_boxes([[700, 700, 50, 50]], 720, 720), [[701, 701, 19, 19]])
    # 1440 x 1000 image, scale 0.5. [11, 21, 41, 40]: x' = round(0.5*10 + 1) = 6,
    # y' = round(0.5*20 + 1) = 11, w' = round(20.5) = 21 (Python 2 rounds halves away from 0),
    # h' = 20; stored [6 + 10, 11 + 10, 21, 20]; x1 = 16 - 10 = 6, width 21; y1 = 21 - 9 = 12,
    # height 19. Back: x = (6 - 1) / 0.5 + 1 = 11, w = 42; y = (12 - 1) / 0.5 + 1 = 23, h = 38.
    np.testing.assert_array_equal(lua_round_gt_boxes([[11, 21, 41, 40]], 1440, 1000), [[11, 23, 42, 38]])
    with pytest.raises(ValueError, match="image size"):
        lua_round_gt_boxes([[0, 0, 1, 1]], 0, 10)


def test_lua_gt_boxes_in_the_evaluation():
    # GT [100, 100, 20, 20] becomes [101, 101, 19, 19]; the prediction [100, 100, 14, 20] has IoU
    # 280/400 = 0.7 with the given box (inclusive: counts at 0.7) but 247/394 = 0.627 with the
    # Lua box: the 0.7 column drops from 100 to 0 -> detection mAP 80, mAP 80.
    g = {1: gt([[100, 100, 20, 20]], ["cat"], width=720, height=720)}
    p = {1: pr([[100, 100, 14, 20]], [0.9], ["cat"])}
    off = evaluate_dense_captions(g, p, exact_scorer)
    on = evaluate_dense_captions(g, p, exact_scorer, lua_gt_boxes=True)
    assert off["detmap"] == pytest.approx(100.0) and off["map"] == pytest.approx(100.0)
    assert on["ap"][ap_key(0.7, -1)] == 0.0 and on["ap"][ap_key(0.6, -1)] == pytest.approx(100.0)
    assert on["detmap"] == pytest.approx(80.0) and on["map"] == pytest.approx(80.0) and on["lua_gt_boxes"]
    with pytest.raises(ValueError, match="image 1.*width"):
        evaluate_dense_captions({1: gt([[0, 0, 5, 5]], ["cat"])}, p, exact_scorer, lua_gt_boxes=True)


def test_cli_lua_gt_boxes_needs_sizes(tmp_path, fake_meteor, capsys):
    regions = [{"id": 1, "regions": [{"x": 100, "y": 100, "width": 20, "height": 20, "phrase": "cat"}]}]
    preds = [{"image_id": 1, "boxes": [[100, 100, 14, 20]], "scores": [0.9], "captions": ["cat"]}]
    g, p = _write(tmp_path / "gt.json", regions), _write(tmp_path / "p.json", preds)
    cli = _cli()
    assert cli.main(["--gt", g, "--pred", p, "--lua-gt-boxes", "-q"]) == 1
    assert "--image-data" in capsys.readouterr().err
    sizes = _write(tmp_path / "image_data.json", [{"image_id": 1, "width": 720, "height": 500}])
    out = tmp_path / "m.json"
    assert cli.main(["--gt", g, "--pred", p, "--lua-gt-boxes", "--image-data", sizes, "--output", str(out), "-q"]) == 0
    m = json.loads(out.read_text())
    assert m["detmap"] == pytest.approx(80.0) and m["lua_gt_boxes"] is True
    out2 = tmp_path / "m2.json"
    assert cli.main(["--gt", g, "--pred", p, "--lua-tensor-type", "double", "--stable-sort",
                     "--output", str(out2), "-q"]) == 0
    m2 = json.loads(out2.read_text())
    assert m2["detmap"] == pytest.approx(100.0) and m2["lua_tensor_type"] == "double" and m2["stable_sort"] is True


# ---------------------------------------------------------------------------------------------
# the defaults did not move on cases without ties or empty images
# ---------------------------------------------------------------------------------------------
WORDS = ["cat", "dog", "red car", "a tree", "sky"]
TABLE = {"cat": 0.3, "dog": 0.12, "red car": 0.22, "a tree": 0.07, "sky": 0.0}


def table_scorer(pairs):
    return [TABLE[c] if c in refs else TABLE[c] / 3 for c, refs in pairs]


def random_case(seed, score_decimals=3):
    rng = np.random.default_rng(seed)
    g, p = {}, {}
    for im in range(6):
        n = int(rng.integers(1, 6))
        xy, wh = rng.uniform(0, 200, (n, 2)), rng.uniform(10, 80, (n, 2))
        g[im] = gt(np.concatenate([xy, wh], 1).round(1), [WORDS[i] for i in rng.integers(0, 5, n)])
        k = int(rng.integers(1, 8))
        b = g[im]["boxes"][rng.integers(0, n, k)] + rng.normal(0, 6, (k, 4)).round(1)
        b[:, 2:] = np.abs(b[:, 2:]) + 1
        scores = rng.random(k).round(score_decimals)
        p[im] = pr(b, scores, [WORDS[i] for i in rng.integers(0, 5, k)])
    return g, p


@pytest.mark.parametrize("seed, expected_map, expected_detmap, some_aps", [
    (3, 4.245396854976813, 27.60000053048134,
     {"iou0.3_meteor-1": 30.33333396911621, "iou0.5_meteor0.1": 0.4285714477300644, "iou0.7_meteor0": 16.66666677594185}),
    (4, 2.344023465116819, 20.17869577407837,
     {"iou0.3_meteor-1": 36.240078926086426, "iou0.5_meteor0.1": 0.0, "iou0.7_meteor0": 2.684210419654846}),
])
def test_defaults_unchanged_without_ties(seed, expected_map, expected_detmap, some_aps):
    # the numbers the evaluator gave before these settings existed (no ties, no empty images)
    g, p = random_case(seed)
    scores = np.concatenate([v["scores"] for v in p.values()])
    assert len(np.unique(scores)) == len(scores)
    res = evaluate_dense_captions(g, p, table_scorer)
    assert res["map"] == pytest.approx(expected_map, abs=1e-12)
    assert res["detmap"] == pytest.approx(expected_detmap, abs=1e-12)
    for k, v in some_aps.items():
        assert res["ap"][k] == pytest.approx(v, abs=1e-12), k
    assert evaluate_dense_captions(g, p, table_scorer, stable_sort=True)["ap"] == res["ap"]


def test_stable_sort_keeps_the_previous_numbers_with_ties():
    g, p = random_case(5, score_decimals=1)  # 21 tied scores among 32
    res = evaluate_dense_captions(g, p, table_scorer, stable_sort=True)
    assert res["map"] == pytest.approx(6.709909038245678, abs=1e-12)  # as before
    assert evaluate_dense_captions(g, p, table_scorer)["map"] == pytest.approx(7.3454458837707834, abs=1e-12)


def test_images_in_the_gt_file_order_for_the_tie_order(tmp_path, fake_meteor):
    # The original's DataLoader visits a split in the order of the preprocessed file, not of the
    # split list. 12 images (ids 0..11 in the GT file), the split lists them reversed; all
    # scores equal, only image 7 is found. In file order image 7 is record 7, which torch.sort
    # ranks first: AP 9 (see test_global_ranking_ties_follow_torch_sort). --stable-sort keeps
    # the split order: image 7 is the 5th record -> precision 1/5 -> 9/5.
    box = {"x": 0, "y": 0, "width": 10, "height": 10, "phrase": "cat"}
    regions = [{"id": i, "regions": [box]} for i in range(12)]
    preds = [{"image_id": i, "boxes": [[0, 0, 10, 10] if i == 7 else [50, 50, 10, 10]], "scores": [0.5],
              "captions": ["cat"]} for i in range(12)]
    g, p = _write(tmp_path / "gt.json", regions), _write(tmp_path / "p.json", preds)
    splits = _write(tmp_path / "splits.json", {"test": list(range(11, -1, -1))})
    res = de.evaluate_dense_files(g, p, split_file=splits, split="test")
    assert res["detmap"] == pytest.approx(9.0) and res["map"] == pytest.approx(9.0)
    res2 = de.evaluate_dense_files(g, p, split_file=splits, split="test", stable_sort=True)
    assert res2["detmap"] == pytest.approx(9.0 / 5) and res2["map"] == pytest.approx(9.0 / 5)
    from densecap.evaluation.io import parse_vg_regions

    g3, _ = parse_vg_regions(regions, image_ids=[5, 2, 9], file_order=True)
    assert list(g3) == [2, 5, 9]
    g4, _ = parse_vg_regions(regions, image_ids=[5, 2, 9], max_images=2, file_order=True)
    assert list(g4) == [2, 5]  # the first 2 of the split, in file order


def test_ascending_sort_is_the_literal_ascending_quicksort():
    # quicksortascend = quicksortdescend with the comparisons reversed: check the identity on the
    # values the original-compatible NMS sorts (scores with ties)
    from densecap.modeling.original.ops import th_sort_ascending
    from densecap.utils.torch7_sort import torch_sort_ascending

    rng = np.random.RandomState(3)
    for n in (3, 11, 12, 40, 300):
        x = rng.randint(0, 6, size=n).astype(np.float64)
        lit = torch_sort_descending_literal(-x)
        np.testing.assert_array_equal(torch_sort_ascending(x), lit)
        assert th_sort_ascending(x.tolist()) == lit.tolist()
        assert list(x[lit]) == sorted(x)
