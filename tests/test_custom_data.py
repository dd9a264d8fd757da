"""Your own data end to end: a small dataset written in every input format, converted, checked
(exact counts of planted problems), registered by name, trained and evaluated; the recipes."""
import csv
import json
import os
import shutil

import pytest
import torch
from PIL import Image

from densecap.data import check, convert
from densecap.data.catalog import DatasetCatalog, regions_cache_root
from densecap.data.region_captions import (
    detect_layout,
    load_schema,
    prepared_region_captions,
    register_region_captions,
    schema_errors,
    split_by_hash,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "synthetic", "densecap_tiny.yaml")
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
W, H = 96, 72
N_IMAGES = 12


def _regions(i):
    """The ground truth of image i: [(box [x, y, w, h], caption)]."""
    c1, c2 = list(COLOURS)[i % 3], list(COLOURS)[(i + 1) % 3]
    return [([4 + i, 6, 30, 24], f"a {c1} box"), ([50, 30 + i % 5, 40, 36], f"the {c2} square"),
            ([0, 0, W, H], "the whole picture")]


def _split(i):
    return "train" if i <= 8 else ("val" if i <= 10 else "test")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Images ``<id>.jpg`` and the same regions in all four input formats."""
    d = tmp_path_factory.mktemp("custom")
    images = d / "images"
    images.mkdir()
    for i in range(1, N_IMAGES + 1):
        im = Image.new("RGB", (W, H), (128, 128, 128))
        for (x, y, w, h), cap in _regions(i)[:2]:
            colour = COLOURS[cap.split()[1]]
            im.paste(colour, (x, y, x + w, y + h))
        im.save(images / f"{i}.jpg", quality=90)
    ids = range(1, N_IMAGES + 1)
    # csv: one row per region, plus a row without caption (left out, reported)
    with open(d / "regions.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["image", "x", "y", "w", "h", "caption"])
        for i in ids:
            for (x, y, w, h), cap in _regions(i):
                wr.writerow([f"{i}.jpg", x, y, w, h, cap])
        wr.writerow(["1.jpg", 5, 5, 10, 10, ""])
    # label studio: percent coordinates; text results share the region's id; one rectangle without text
    tasks = []
    for i in ids:
        result = []
        for k, ((x, y, w, h), cap) in enumerate(_regions(i)):
            value = {"x": 100 * x / W, "y": 100 * y / H, "width": 100 * w / W, "height": 100 * h / H, "rotation": 0}
            rid = f"r{i}_{k}"
            kind = "rectanglelabels" if k % 2 == 0 else "rectangle"
            rect = {"id": rid, "type": kind, "from_name": "box", "to_name": "image",
                    "original_width": W, "original_height": H, "value": dict(value)}
            if kind == "rectanglelabels":
                rect["value"]["rectanglelabels"] = ["thing"]
            text = {"id": rid, "type": "textarea", "from_name": "caption", "to_name": "image",
                    "original_width": W, "original_height": H, "value": dict(value, text=[cap])}
            result += [text, rect] if k == 1 else [rect, text]  # order does not matter
        if i == 1:
            result.append({"id": "nocap", "type": "rectangle", "from_name": "box", "to_name": "image",
                           "original_width": W, "original_height": H,
                           "value": {"x": 10, "y": 10, "width": 5, "height": 5, "rotation": 0}})
        tasks.append({"id": i, "data": {"image": f"/data/upload/3/{i}.jpg"},
                      "annotations": [{"id": 100 + i, "was_cancelled": False, "result": result}]})
    (d / "label_studio.json").write_text(json.dumps(tasks))
    # coco-style (with splits and one whole-image caption)
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": W, "height": H, "split": _split(i)} for i in ids],
            "annotations": [{"id": 10 * i + k, "image_id": i, "bbox": b, "caption": c}
                            for i in ids for k, (b, c) in enumerate(_regions(i))],
            "image_captions": [{"image_id": 1, "caption": "boxes on grey"}]}
    (d / "coco.json").write_text(json.dumps(coco))
    # visual genome
    vg = d / "vg"
    vg.mkdir()
    (vg / "region_descriptions.json").write_text(json.dumps([
        {"id": i, "regions": [{"region_id": 10 * i + k, "image_id": i, "x": b[0], "y": b[1], "width": b[2],
                               "height": b[3], "phrase": c} for k, (b, c) in enumerate(_regions(i))]} for i in ids]))
    (vg / "image_data.json").write_text(json.dumps([{"image_id": i, "width": W, "height": H, "coco_id": None} for i in ids]))
    (vg / "densecap_splits.json").write_text(json.dumps({s: [i for i in ids if _split(i) == s] for s in ("train", "val", "test")}))
    return d


def _content(doc):
    """{file_name: sorted [(box rounded, caption)]} of a region caption document."""
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    out = {n: [] for n in names.values()}
    for a in doc["annotations"]:
        out[names[a["image_id"]]].append((tuple(round(v, 3) for v in a["bbox"]), a["caption"]))
    return {k: sorted(v) for k, v in out.items()}


EXPECTED = {f"{i}.jpg": sorted((tuple(float(v) for v in b), c) for b, c in _regions(i)) for i in range(1, N_IMAGES + 1)}


@pytest.mark.parametrize("fmt,name,left_out", [
    ("csv", "regions.csv", {"missing_caption": 1}),
    ("label-studio", "label_studio.json", {"missing_caption": 1}),
    ("coco", "coco.json", {}),
    ("vg", "vg/region_descriptions.json", {}),
])
def test_convert_every_format(data, tmp_path, capsys, fmt, name, left_out):
    out = tmp_path / "annotations.json"
    rc = convert.main(["--from", fmt, "--input", str(data / name), "--image-root", str(data / "images"),
                       "--output", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert schema_errors(doc, "region_captions") == []
    assert _content(doc) == EXPECTED  # the same regions whatever the input format; nothing invented
    assert all(im["width"] == W and im["height"] == H for im in doc["images"])
    printed = capsys.readouterr().out
    for reason, n in left_out.items():
        assert f"{reason}: {n} left out" in printed
    if not left_out:
        assert "left out" not in printed
    if fmt in ("coco", "vg"):  # splits carried over
        assert {im["file_name"]: im["split"] for im in doc["images"]} == {f"{i}.jpg": _split(i) for i in range(1, N_IMAGES + 1)}
    if fmt == "coco":
        assert doc["image_captions"] == [{"image_id": 1, "caption": "boxes on grey"}]


def test_round_trip_coco_vg_coco(data, tmp_path):
    first = tmp_path / "a.json"
    assert convert.main(["--from", "coco", "--input", str(data / "coco.json"), "--output", str(first),
                         "--image-root", str(data / "images")]) == 0
    vg = tmp_path / "vg"
    assert convert.main(["--from", "coco", "--input", str(first), "--output", str(vg), "--to", "vg",
                         "--image-root", str(data / "images")]) == 0
    assert sorted(os.listdir(vg)) == ["densecap_splits.json", "image_data.json", "region_descriptions.json"]
    second = tmp_path / "b.json"
    assert convert.main(["--from", "vg", "--input", str(vg / "region_descriptions.json"), "--output", str(second),
                         "--image-root", str(data / "images")]) == 0
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    a.pop("image_captions")  # Visual Genome's layout has no whole-image captions
    assert a == b


def test_label_studio_details(tmp_path):
    """Rotated boxes are left out (never approximated); a free TextArea is a whole-image caption."""
    Image.new("RGB", (200, 100)).save(tmp_path / "x.jpg")
    res = [
        {"id": "a", "type": "rectanglelabels", "original_width": 200, "original_height": 100,
         "value": {"x": 10, "y": 20, "width": 50, "height": 40, "rotation": 0, "rectanglelabels": ["dog"]}},
        {"id": "a", "type": "textarea", "value": {"x": 10, "y": 20, "width": 50, "height": 40, "text": ["a brown dog"]}},
        {"id": "b", "type": "rectangle", "original_width": 200, "original_height": 100,
         "value": {"x": 0, "y": 0, "width": 10, "height": 10, "rotation": 30}},
        {"id": "b", "type": "textarea", "value": {"x": 0, "y": 0, "width": 10, "height": 10, "text": ["tilted"]}},
        {"id": "c", "type": "textarea", "value": {"text": ["a dog in a park"]}},
    ]
    tasks = [{"id": 7, "data": {"image": "/data/local-files/?d=x.jpg"},
              "annotations": [{"was_cancelled": True, "result": []}, {"result": res}]}]
    p = tmp_path / "ls.json"
    p.write_text(json.dumps(tasks))
    problems = convert.Problems()
    doc = convert.convert("label-studio", str(p), str(tmp_path), problems)
    assert doc["images"] == [{"id": 7, "file_name": "x.jpg", "width": 200, "height": 100}]
    assert [(a["bbox"], a["caption"]) for a in doc["annotations"]] == [([20.0, 20.0, 100.0, 40.0], "a brown dog")]
    assert doc["image_captions"] == [{"image_id": 7, "caption": "a dog in a park"}]
    assert problems.counts == {"rotated_box": 1}


def test_converter_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,left,top\nx.jpg,1,2\n")
    assert convert.main(["--from", "csv", "--input", str(bad), "--output", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "image,x,y,w,h,caption" in err
    assert not (tmp_path / "o.json").exists()


# ---------------------------------------------------------------------------------------------
# check_dataset
# ---------------------------------------------------------------------------------------------
def _planted(data, tmp_path):
    """A COCO-style file with exactly one of each problem; returns (path, image root)."""
    root = tmp_path / "images"
    shutil.copytree(data / "images", root)
    os.remove(root / "3.jpg")  # missing_image (image 3)
    (root / "4.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")  # broken_image (image 4)
    doc = json.loads((data / "coco.json").read_text())
    anns = doc["annotations"]
    anns[0]["bbox"] = [80, 10, 30, 20]  # box_outside: 80 + 30 > 96 (image 1)
    anns[1]["bbox"] = [10, 10, 0, 20]  # zero_area (image 1)
    anns[3]["caption"] = " ?! "  # empty_caption: no token (image 2)
    anns.append(dict(anns[4], id=999))  # duplicate_region (image 2)
    p = tmp_path / "planted.json"
    p.write_text(json.dumps(doc))
    return p, root


def test_check_counts_planted_problems_exactly(data, tmp_path, capsys):
    path, root = _planted(data, tmp_path)
    before = path.read_bytes(), sorted(os.listdir(root))
    rc = check.main([str(path), "--image-root", str(root), "--json", str(tmp_path / "r.json"),
                     "--figure", str(tmp_path / "stats.png")])
    assert rc == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["images"] == N_IMAGES and report["regions"] == 3 * N_IMAGES + 1
    assert report["problems"] == {"missing_image": 1, "broken_image": 1, "box_outside": 1, "zero_area": 1,
                                  "empty_caption": 1, "duplicate_region": 1}
    out = capsys.readouterr().out
    assert "3.jpg not found" in out and "4.jpg" in out and "box [80, 10, 30, 20] in a 96x72 image" in out
    with Image.open(tmp_path / "stats.png") as im:
        assert im.size == (1200, 720)
    assert (path.read_bytes(), sorted(os.listdir(root))) == before  # nothing modified


def test_check_clean_vg_layout_and_unreadable(data, tmp_path, capsys):
    vg = data / "vg" / "region_descriptions.json"
    rc = check.main([str(vg), "--image-root", str(data / "images"), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["layout"] == "region_descriptions"
    assert (report["images"], report["regions"]) == (N_IMAGES, 3 * N_IMAGES)
    assert set(report["problems"].values()) == {0}
    # a schema violation is a problem too (a region without a phrase counts as an empty caption)
    broken = json.loads(vg.read_text())
    del broken[0]["regions"][0]["phrase"]
    (tmp_path / "region_descriptions.json").write_text(json.dumps(broken))
    rc = check.main([str(tmp_path / "region_descriptions.json"), "--image-root", str(data / "images"),
                     "--json", str(tmp_path / "r2.json")])
    report = json.loads((tmp_path / "r2.json").read_text())
    assert rc == 1 and report["problems"]["schema"] == 1 and report["problems"]["empty_caption"] == 1
    # the file itself unreadable: exit 2
    (tmp_path / "trunc.json").write_text('{"images": [')
    assert check.main([str(tmp_path / "trunc.json"), "--image-root", str(tmp_path)]) == 2
    assert check.main([str(tmp_path / "absent.json"), "--image-root", str(tmp_path)]) == 2
    (tmp_path / "other.json").write_text('{"foo": 1}')
    assert check.main([str(tmp_path / "other.json"), "--image-root", str(tmp_path)]) == 2
    assert "docs/DATASETS.md" in capsys.readouterr().err


def test_schemas_shipped_and_strict():
    for name in ("region_captions", "region_descriptions", "image_data", "splits"):
        assert load_schema(name)["$schema"].startswith("https://json-schema.org/")
    assert schema_errors({"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}],
                          "annotations": [{"image_id": 1, "bbox": [0, 0, 1], "caption": "x"}]}, "region_captions")
    assert detect_layout([]) == "region_descriptions"
    with open(os.path.join(ROOT, "setup.py")) as f:
        assert '"densecap.data": ["schemas/*.json"]' in f.read()
    # the default split: fixed, about 80 / 10 / 10
    splits = [split_by_hash(i) for i in range(1000)]
    assert splits == [split_by_hash(i) for i in range(1000)]
    assert 750 < splits.count(0) < 850 and 60 < splits.count(1) < 140


# ---------------------------------------------------------------------------------------------
# registration, lazy preparation, training
# ---------------------------------------------------------------------------------------------
def test_prepared_lazily_with_the_vg_rules_and_drop_report(data, tmp_path):
    path, root = _planted(data, tmp_path)
    cache = regions_cache_root(str(tmp_path / "root"))
    d = prepared_region_captions(str(path), str(root), cache_root=str(cache), min_token_count=1)
    report = json.loads(open(os.path.join(d, "report.json")).read())
    # VG's filters: the missing image and the zero-area / empty-caption regions are dropped, the box
    # reaching outside is clipped and kept, the duplicate is kept (evaluation merges it)
    assert report["missing_image"] == 1 and report["zero_area"] == 1 and report["empty_caption"] == 1
    assert report["outside_image"] == 0 and report["duplicate_regions"] == 1
    assert report["images_kept"] == {"train": 7, "val": 2, "test": 2}
    from densecap.data.prepared import load_split, load_vocab

    tr = load_split(d, "train")
    assert tr.boxes[0].tolist() == [80.0, 10.0, 16.0, 20.0]  # clipped to the 96-px image
    assert {"red", "blue", "green", "box", "square", "whole", "picture"} <= set(load_vocab(d).idx_to_token)
    with open(os.path.join(os.path.dirname(d), "captions.json")) as f:  # whole-image captions beside it
        assert json.load(f)["annotations"][0]["caption"] == "boxes on grey"
    # cached: the same directory, not prepared again; a changed file is prepared again
    mtime = os.stat(os.path.join(d, "train.npz")).st_mtime_ns
    assert prepared_region_captions(str(path), str(root), cache_root=str(cache), min_token_count=1) == d
    assert os.stat(os.path.join(d, "train.npz")).st_mtime_ns == mtime
    doc = json.loads(path.read_text())
    doc["annotations"] = doc["annotations"][:-1]
    path.write_text(json.dumps(doc))
    d2 = prepared_region_captions(str(path), str(root), cache_root=str(cache), min_token_count=1)
    assert d2 != d and json.load(open(os.path.join(d2, "report.json")))["duplicate_regions"] == 0
    # the VG layout prepares the same way (its image_data.json and densecap_splits.json beside it)
    d3 = prepared_region_captions(str(data / "vg" / "region_descriptions.json"), str(data / "images"),
                                  cache_root=str(cache), min_token_count=1)
    assert json.load(open(os.path.join(d3, "report.json")))["regions_kept"] == {"train": 24, "val": 6, "test": 6}
    # register_region_captions: names for the three splits, the same preparation
    names = register_region_captions("mydata_reg", str(path), str(root), min_token_count=1)
    try:
        assert names == ["mydata_reg_train", "mydata_reg_val", "mydata_reg_test"]
        assert DatasetCatalog.resolve("mydata_reg_val", str(tmp_path / "root"), min_token_count=15) == (d2, "val")
        with pytest.raises(KeyError, match="already registered"):
            register_region_captions("mydata_reg", str(path), str(root))
    finally:
        for n in names:
            DatasetCatalog.remove(n)


def _tiny_opts(train, test, tmp_path, extra=()):
    return ["DATASETS.TRAIN", repr((train,)), "DATASETS.TEST", repr((test,)), "DATASETS.ROOT", str(tmp_path / "root"),
            "DATASETS.REGIONS_MIN_TOKEN_COUNT", "1", "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "4",
            *extra]


def test_train_and_evaluate_from_the_catalog_string_then_finetune(data, tmp_path):
    from densecap.config import load_config
    from densecap.engine.checkpoint import load_checkpoint
    from densecap.engine.trainer import Trainer

    ann = tmp_path / "annotations.json"
    assert convert.main(["--from", "label-studio", "--input", str(data / "label_studio.json"),
                         "--image-root", str(data / "images"), "--output", str(ann)]) == 0
    # splits: label studio has none, so the fixed split by image id applies; put them in the file
    doc = json.loads(ann.read_text())
    for im in doc["images"]:
        im["split"] = _split(im["id"])
    ann.write_text(json.dumps(doc))
    name = f"regions:{ann}:{data / 'images'}:"
    cfg = load_config(TINY, _tiny_opts(name + "train", name + "val", tmp_path))
    results = Trainer(cfg).train()
    assert set(results) >= {"map", "detmap", "ap", "caption_accuracy"}
    final = load_checkpoint(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    assert final["iteration"] == 4
    assert {"red", "blue", "green", "square", "picture"} <= set(final["vocab"]["idx_to_token"])
    prepared = os.listdir(tmp_path / "root" / "cache" / "regions")
    assert len(prepared) == 1 and prepared[0].startswith("annotations-")

    # the demo-model recipe, at the tiny widths, from that checkpoint: FREEZE_AT and the backbone LR factor
    recipe = os.path.join(ROOT, "configs", "finetune", "densecap_small_demo_custom.yaml")
    tiny = load_config(TINY, [])
    widths = ["MODEL.BACKBONE.WIDTH", "16", "MODEL.RPN.HEAD_CHANNELS", "16", "MODEL.RPN.ANCHORS", repr(tiny.MODEL.RPN.ANCHORS),
              "MODEL.ROI.FC_DIM", "32", "MODEL.ROI.BATCH_SIZE_PER_IMAGE", "16", "MODEL.CAPTION.EMBED_SIZE", "16",
              "MODEL.CAPTION.HIDDEN_SIZE", "16", "MODEL.EMBEDDING.ENABLED", "False", "INPUT.MAX_SIZE", "128",
              "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "TEST.MAX_IMAGES", "2",
              "SOLVER.WARMUP_ITERS", "0", "MODEL.WEIGHTS", os.path.join(cfg.OUTPUT_DIR, "model_final.pth")]
    ft = load_config(recipe, _tiny_opts(name + "train", name + "val", tmp_path, widths + ["SOLVER.MAX_ITER", "2"]))
    ft.OUTPUT_DIR = str(tmp_path / "ft")
    ft.DATASETS.TEST = ()  # evaluated above (METEOR's start-up is most of this test's time)
    assert ft.MODEL.BACKBONE.FREEZE_AT == 1 and ft.SOLVER.BACKBONE_LR_FACTOR == 0.1
    trainer = Trainer(ft)
    model = trainer.model
    frozen = [p for p in model.backbone.stages_for_freezing()[0].parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    before = [p.detach().clone() for p in frozen]
    lrs = sorted(g["initial_lr"] for g in trainer.optimizer.param_groups)
    assert lrs == pytest.approx([ft.SOLVER.BASE_LR * 0.1, ft.SOLVER.BASE_LR])
    trainer.train()
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, frozen))


def test_recipes_load():
    from densecap.config import load_config

    d = os.path.join(ROOT, "configs", "finetune")
    for f in ("densecap_small_demo_custom.yaml", "densecap_R50_FPN_imagenet_custom.yaml"):
        cfg = load_config(os.path.join(d, f), [])
        assert cfg.DATASETS.TRAIN[0].startswith("regions:") and cfg.DATASETS.TRAIN[0].endswith(":train")
        assert cfg.DATASETS.TEST[0].endswith(":val")
    assert load_config(os.path.join(d, "densecap_small_demo_custom.yaml"), []).MODEL.WEIGHTS == "output/demo/model_final.pth"
    original = os.path.join(d, "densecap_vgg16_original_custom.yaml")
    with open(original) as f:
        text = f.read()
    assert '_BASE_: "../densecap_vgg16_original.yaml"' in text and 'WEIGHTS: "densecap_vgg16.pth"' in text
    if os.path.isfile(os.path.join(ROOT, "configs", "densecap_vgg16_original.yaml")):
        cfg = load_config(original, [])
        assert cfg.MODEL.WEIGHTS == "densecap_vgg16.pth" and cfg.MODEL.BACKBONE.FREEZE_AT == 2
        assert cfg.SOLVER.BACKBONE_LR_FACTOR == 0.1


def test_fast_schema_path_never_accepts_what_the_schema_rejects():
    """schema_errors skips jsonschema when plain checks pass: those checks must imply validity."""
    import copy

    from densecap.data import region_captions as rc

    valid = {
        ("region_captions", False): {"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 3, "split": "val"}],
                                     "annotations": [{"id": 2, "image_id": 1, "bbox": [0, 0.5, 2, 2], "caption": "x"}],
                                     "image_captions": [{"image_id": 1, "caption": "y"}], "info": {}},
        ("region_descriptions", True): {"id": 1, "regions": [{"region_id": 3, "image_id": 1, "x": 0, "y": 1.5,
                                                             "width": 2, "height": 2, "phrase": "x"}]},
        ("image_data", True): {"image_id": 1, "width": 4, "height": 3, "coco_id": None},
    }
    bad_values = [None, True, 1.5, -1, 0, "1", [], {}]

    def mutations(d, path=()):
        if isinstance(d, dict):
            for k in list(d):
                yield path + (k,), "delete"
                yield from mutations(d[k], path + (k,))
        elif isinstance(d, list):
            for i, v in enumerate(d):
                yield from mutations(v, path + (i,))
        for v in bad_values:
            if path:
                yield path, v

    n_checked = 0
    for (name, items), doc in valid.items():
        fast = rc._FAST_VALID[(name, items)]
        assert fast(doc) and rc.schema_errors(doc, name, items=items) == []
        for path, value in mutations(doc):
            d = copy.deepcopy(doc)
            parent = d
            for p in path[:-1]:
                parent = parent[p]
            if value == "delete":
                if isinstance(parent, dict):
                    del parent[path[-1]]
                else:
                    continue
            else:
                parent[path[-1]] = value
            if fast(d):
                assert list(rc._validator(name, items).iter_errors(d)) == [], (name, path, value)
            n_checked += 1
    assert n_checked > 100


def test_whole_image_captions_reach_the_joint_head(data, tmp_path):
    """A COCO-style file's image_captions train the joint whole-image caption head: found beside the
    prepared directory, their new words appended to the vocabulary."""
    from densecap.config import load_config
    from densecap.engine.build import build_dataset, load_train_vocab

    name = f"regions:{data / 'coco.json'}:{data / 'images'}:"
    cfg = load_config(TINY, _tiny_opts(name + "train", name + "val", tmp_path, [
        "MODEL.IMAGE_CAPTION.ENABLED", "True", "MODEL.IMAGE_CAPTION.VOCAB_MIN_COUNT", "1"]))
    vocab = load_train_vocab(cfg)
    assert {"boxes", "grey"} <= set(vocab.idx_to_token)
    ds = build_dataset(cfg, name + "train", is_train=True, vocab=vocab)
    assert ds.num_images_with_captions() == 1
    i = [int(x) for x in ds.data.image_ids].index(1)
    assert ds[i]["gt_image_captions"] == ["boxes on grey"]


def test_split_sources_in_order(data, tmp_path):
    """A COCO-style file without split fields takes densecap_splits.json beside it, else the fixed
    split by image id."""
    doc = json.loads((data / "coco.json").read_text())
    for im in doc["images"]:
        del im["split"]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "annotations.json").write_text(json.dumps(doc))
    cache = str(tmp_path / "cache")
    d = prepared_region_captions(str(tmp_path / "a" / "annotations.json"), str(data / "images"), cache_root=cache)
    by_hash = [split_by_hash(i) for i in range(1, N_IMAGES + 1)]
    assert json.load(open(os.path.join(d, "report.json")))["images_kept"] == {
        s: by_hash.count(k) for k, s in enumerate(("train", "val", "test"))}
    shutil.copy(data / "vg" / "densecap_splits.json", tmp_path / "a")
    d = prepared_region_captions(str(tmp_path / "a" / "annotations.json"), str(data / "images"), cache_root=cache)
    assert json.load(open(os.path.join(d, "report.json")))["images_kept"] == {"train": 8, "val": 2, "test": 2}
