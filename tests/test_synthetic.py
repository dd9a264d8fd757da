"""The synthetic Visual-Genome-format generator: determinism, files, captions consistent with pixels
and geometry."""
import hashlib
import json
import os

import numpy as np
import pytest

from densecap.data import synthetic as syn
from densecap.data.image_io import read_image
from densecap.data.tokenizer import tokenize

N = 12
REL_WORDS = ("left of", "right of", "above", "below", "next to")


def _digest(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    a, b, c = str(root / "a"), str(root / "b"), str(root / "c")
    syn.generate(a, N, seed=3)
    syn.generate(b, N, seed=3)
    syn.generate(c, N, seed=4)
    return a, b, c


def test_same_seed_identical_bytes_different_seed_differs(gen):
    a, b, c = gen
    da, db, dc = _digest(a), _digest(b), _digest(c)
    expected = {"image_data.json", "region_descriptions.json", "densecap_splits.json", "captions.json"}
    expected |= {f"images/{i}.jpg" for i in range(1, N + 1)}
    assert set(da) == expected
    assert da == db
    assert set(dc) == expected
    assert all(da[k] != dc[k] for k in da if k.startswith("images/"))
    assert da["region_descriptions.json"] != dc["region_descriptions.json"]


def test_files_follow_the_vg_formats(gen):
    a = gen[0]
    image_data = json.load(open(os.path.join(a, "image_data.json")))
    assert [d["image_id"] for d in image_data] == list(range(1, N + 1))
    assert all(d["width"] == 256 and d["height"] == 256 for d in image_data)
    assert set(image_data[0]) == {"image_id", "width", "height", "url", "coco_id", "flickr_id"}
    rd = json.load(open(os.path.join(a, "region_descriptions.json")))
    assert [e["id"] for e in rd] == list(range(1, N + 1))
    rids = [r["region_id"] for e in rd for r in e["regions"]]
    assert len(set(rids)) == len(rids)
    for e in rd:
        for r in e["regions"]:
            assert set(r) == {"region_id", "image_id", "x", "y", "width", "height", "phrase"}
            assert r["image_id"] == e["id"]
            assert all(isinstance(r[k], int) for k in ("x", "y", "width", "height"))
            assert r["x"] >= 0 and r["y"] >= 0 and r["width"] > 0 and r["height"] > 0
            assert r["x"] + r["width"] <= 256 and r["y"] + r["height"] <= 256
            assert 1 <= len(tokenize(r["phrase"])) <= 15
    splits = json.load(open(os.path.join(a, "densecap_splits.json")))
    allids = splits["train"] + splits["val"] + splits["test"]
    assert sorted(allids) == list(range(1, N + 1))
    assert len(splits["val"]) == len(splits["test"]) == 1  # 10 % of 12, at least one
    caps = json.load(open(os.path.join(a, "captions.json")))
    assert len(caps["images"]) == N
    split_of = {i: s for s, ids in splits.items() for i in ids}
    sentids = []
    for k, im in enumerate(caps["images"]):
        assert im["imgid"] == k and im["filename"] == f"{im['image_id']}.jpg"
        assert im["filepath"] == "images" and im["split"] == split_of[im["image_id"]]
        assert len(im["sentences"]) >= 2
        for s in im["sentences"]:
            assert s["tokens"] == tokenize(s["raw"]) and len(s["tokens"]) <= 17
            sentids.append(s["sentid"])
        assert "background" in im["sentences"][0]["raw"]
    assert sentids == list(range(len(sentids)))


def _parse_object(phrase):
    words = phrase.split()
    if words[0] not in ("a", "an") or any(r in phrase for r in REL_WORDS):
        return None
    size = {"small": "small", "little": "small", "large": "large", "big": "large"}[words[1]]
    fill = "striped" if words[2] == "striped" else "solid"
    color, shape = words[-2], words[-1]
    assert color in syn.COLORS and shape in syn.SHAPES
    return size, fill, color, shape


def _iou(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_regions_consistent_with_geometry_and_pixels():
    n_rel = n_dup = 0
    vocab = set()
    for idx in range(40):
        img, regions, sentences, background = syn.make_scene(7, idx)
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
        objs, rels = [], []
        for x, y, w, h, phrase in regions:
            vocab.update(phrase.split())
            parsed = _parse_object(phrase)
            (rels if parsed is None else objs).append(((x, y, w, h), phrase, parsed))
        # object regions first, then near duplicates (IoU >= 0.75 with an object, same attributes)
        n_obj = next(k for k, o in enumerate(objs) if any(_iou(o[0], p[0]) >= 0.75 for p in objs[:k]))
        originals, dups = objs[:n_obj], objs[n_obj:]
        assert 2 <= len(originals) <= 6 and 1 <= len(dups) <= 2
        for box, phrase, parsed in dups:
            assert any(_iou(box, o[0]) >= 0.75 and o[2] == parsed and box != o[0] for o in originals)
        n_dup += len(dups)
        for box, phrase, parsed in originals:
            size, fill, color, shape = parsed
            side = max(box[2], box[3])
            lo, hi = syn.SIZES[size]
            assert lo - 2 <= side <= hi + 2, (phrase, box)
        # objects stay visible: limited overlap
        for i in range(len(originals)):
            for j in range(i):
                assert _iou(originals[i][0], originals[j][0]) < syn.MAX_IOU
        # at least one relation; its box is the union of the two named objects, word from geometry
        assert 1 <= len(rels) <= 2
        for box, phrase, _ in rels:
            n_rel += 1
            word = next(r for r in REL_WORDS if f" {r} " in phrase)
            left, right = phrase.split(f" {word} ")
            a_name, b_name = " ".join(left.split()[-2:]), " ".join(right.split()[-2:])
            a = [o for o in originals if " ".join(o[1].split()[-2:]) == a_name]
            b = [o for o in originals if " ".join(o[1].split()[-2:]) == b_name]
            assert len(a) == len(b) == 1, "relations only between unambiguous objects"
            oa = syn.Obj(a[0][2][3], a[0][2][2], a[0][2][0], a[0][2][1], a[0][0])
            ob = syn.Obj(b[0][2][3], b[0][2][2], b[0][2][0], b[0][2][1], b[0][0])
            assert syn.relation(oa, ob) == word
            assert tuple(box) == syn.union_box(oa, ob)
        # a solid object's centre shows its colour unless another object covers it
        for k, (box, phrase, (size, fill, color, shape)) in enumerate(originals):
            cx, cy = box[0] + box[2] // 2, box[1] + box[3] // 2
            covered = any(o[0][0] <= cx < o[0][0] + o[0][2] and o[0][1] <= cy < o[0][1] + o[0][3]
                          for j, o in enumerate(originals) if j != k)
            if fill == "solid" and shape != "star" and not covered:
                got = img[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(0)
                assert np.abs(got - np.array(syn.COLORS[color])).max() < 30, (phrase, got)
        assert background in syn.BACKGROUNDS and background in sentences[0]
    assert n_rel >= 40 and n_dup >= 40
    assert len(vocab) <= 32


def test_relation_word_rules():
    def o(x, y, w=20, h=20):
        return syn.Obj("circle", "red", "small", "solid", (x, y, w, h))

    assert syn.relation(o(0, 100), o(100, 105)) == "left of"
    assert syn.relation(o(100, 105), o(0, 100)) == "right of"
    assert syn.relation(o(100, 0), o(105, 100)) == "above"
    assert syn.relation(o(105, 100), o(100, 0)) == "below"
    assert syn.relation(o(0, 0, 40, 20), o(30, 2, 40, 20)) == "next to"  # side by side, touching
    assert syn.relation(o(0, 0), o(100, 100)) is None  # diagonal: no clear relation
    assert syn.union_box(o(0, 100), o(100, 105)) == (0, 100, 120, 25)


def test_scene_caption_counts_groups():
    objs = [syn.Obj("circle", "red", "small", "solid", (0, 0, 30, 30)),
            syn.Obj("triangle", "blue", "large", "striped", (100, 0, 60, 60)),
            syn.Obj("circle", "red", "large", "solid", (50, 0, 70, 70))]
    assert syn.scene_caption(objs, "dark") == "two red circles and a blue triangle on a dark background"
    objs6 = [syn.Obj(s, c, "small", "solid", (i * 40, 0, 30, 30))
             for i, (s, c) in enumerate(zip(syn.SHAPES, syn.COLOR_NAMES))]
    cap = syn.scene_caption(objs6, "noisy")
    assert cap == "a circle, a square, a triangle, a star, a hexagon and a diamond on a noisy background"
    assert syn.object_phrase(objs[1]) == "a large striped blue triangle"
    assert syn.object_phrase(syn.Obj("star", "orange", "small", "solid", (0, 0, 1, 1))) == "a small orange star"
    assert syn.short_phrase(syn.Obj("star", "orange", "small", "solid", (0, 0, 1, 1))) == "an orange star"


def test_jpeg_reads_back_close_to_drawn(gen):
    img, _, _, _ = syn.make_scene(3, 0)
    back = read_image(os.path.join(gen[0], "images", "1.jpg"))
    assert back.shape == img.shape
    assert np.abs(back.astype(int) - img.astype(int)).mean() < 4
