"""tools/infer.py end to end: results.json schema, overlays, bad inputs, image modes, EXIF frames,
batching, --boxes, --extract-features, videos, globs, HTML escaping.

Two models: ``FakeDenseCapModel`` (tests/fake_model.py, deterministic from the pixels: a box over a
red patch is captioned "red region") proves boxes land on the right pixels of the displayed image;
the tiny random real model (densecap.modeling, small_cnn) runs the real command line from a saved
checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fake_model import FakeDenseCapModel  # noqa: E402
from infer_images import make_bad_inputs, make_good_images, scene  # noqa: E402

from densecap.data.image_io import read_image, resize_longest_side  # noqa: E402
from densecap.inference.cli import build_parser, main, run  # noqa: E402
from densecap.inference.features import load_features  # noqa: E402
from densecap.inference.inputs import collect_inputs, unique_names  # noqa: E402
from densecap.inference.predictor import DenseCapPredictor  # noqa: E402
from densecap.inference.results import image_id_from_name, load_results  # noqa: E402
from densecap.inference.viewer import embed_json  # noqa: E402
from densecap.inference.visualize import draw_dense_captions, palette  # noqa: E402

IMAGE_SIZE = 128
RESULT_KEYS = {"img_name", "image_id", "width", "height", "boxes", "scores", "captions", "caption_logprobs"}


# ------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_inputs")
    good = str(root / "good")
    patches, sizes = make_good_images(good)
    bad = str(root / "bad")
    bad_words = make_bad_inputs(bad)
    return {"root": str(root), "good": good, "bad": bad, "patches": patches, "sizes": sizes, "bad_words": bad_words}


def run_fake(argv, model=None, image_size=IMAGE_SIZE, **kw):
    """Run the command line with the fake model injected (no checkpoint needed)."""
    args = build_parser().parse_args(["--weights", "unused.pth", "--no-progress", *argv])
    model = model if model is not None else FakeDenseCapModel()
    return run(args, DenseCapPredictor(model, image_size=image_size, image_caption=args.image_caption, **kw))


def results_by_name(out_dir):
    d = load_results(os.path.join(out_dir, "results.json"))
    return d, {r["img_name"]: r for r in d["results"]}


def check_schema(d):
    assert set(d) == {"results", "errors", "opt"}
    for r in d["results"]:
        assert RESULT_KEYS <= set(r), set(r)
        n = len(r["boxes"])
        assert len(r["scores"]) == len(r["captions"]) == len(r["caption_logprobs"]) == n
        assert all(len(b) == 4 for b in r["boxes"])
        assert isinstance(r["width"], int) and isinstance(r["height"], int)
        assert all(isinstance(c, str) for c in r["captions"])
        s = np.asarray(r["scores"], np.float64)
        assert np.all((s >= 0) & (s <= 1))
        if not r.get("given_boxes"):
            assert np.all(np.diff(s) <= 1e-7), "boxes must be in descending score order"
        assert np.all(np.isfinite(np.asarray(r["caption_logprobs"], np.float64)))
    for e in d["errors"]:
        assert set(e) == {"path", "error"} and e["path"] and e["error"]


def iou(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


# ------------------------------------------------------------------------------------------
# the main run: every good image mode plus every bad input, in one folder
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def main_run(data, tmp_path_factory):
    import shutil

    mixed = tmp_path_factory.mktemp("mixed")
    for d in (data["good"], data["bad"]):
        for n in os.listdir(d):
            src = os.path.join(d, n)
            (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(mixed, n))
    out = str(tmp_path_factory.mktemp("out_main"))
    import contextlib
    import io

    err, so = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(so):
        summary = run_fake(["--input", str(mixed), "--output", out, "--extract-features", "--topk", "5"])
    return {"dir": str(mixed), "out": out, "summary": summary, "stderr": err.getvalue(), "stdout": so.getvalue()}


def test_results_schema_and_summary(main_run, data):
    d, by = results_by_name(main_run["out"])
    check_schema(d)
    assert sorted(by) == sorted(data["sizes"]), "every good image captioned, nothing else"
    for name, (w, h) in data["sizes"].items():
        r = by[name]
        assert (r["width"], r["height"]) == (w, h), name  # the displayed size
        b = np.asarray(r["boxes"])
        assert len(b) == 14
        assert b[:, 0].min() >= -1e-3 and b[:, 1].min() >= -1e-3
        assert (b[:, 0] + b[:, 2]).max() <= w + 1e-2 and (b[:, 1] + b[:, 3]).max() <= h + 1e-2
        assert r["file_name"] == os.path.join(main_run["dir"], name)
    assert by["1234.png"]["image_id"] == 1234 and by["rgb.jpg"]["image_id"] is None
    assert len({r["name"] for r in d["results"]}) == len(d["results"])
    assert d["opt"]["image_size"] == IMAGE_SIZE and d["opt"]["topk"] == 5
    s = main_run["summary"]
    assert s["images"] == len(data["sizes"]) and s["failed"] == len(data["bad_words"])
    line = main_run["stdout"].strip().splitlines()[-1]
    assert re.match(rf"done: {s['images']} images captioned, {s['failed']} failed, [0-9.]+ s/image", line), line


def test_every_bad_input_reported_not_fatal(main_run, data):
    d, _ = results_by_name(main_run["out"])
    errors = {os.path.basename(e["path"]): e for e in d["errors"]}
    assert set(errors) == set(data["bad_words"]), errors  # notes.txt is silently not an image name
    for name, word in data["bad_words"].items():
        assert word in errors[name]["error"], (name, errors[name])
        assert errors[name]["path"] == os.path.join(main_run["dir"], name)
        assert os.path.join(main_run["dir"], name) in main_run["stderr"], f"{name} not reported on stderr"


def test_boxes_land_on_the_displayed_pixels_for_every_mode(main_run, data):
    """The fake model names each region's colour: the top 'red region' detection must overlap the
    red patch of the displayed image, whatever the pixel mode, EXIF rotation or size."""
    _, by = results_by_name(main_run["out"])
    for name, p in data["patches"].items():
        if name in ("grey.png", "deep16.png"):
            continue  # no colour; covered by the --boxes test below
        r = by[name]
        reds = [b for b, c in zip(r["boxes"], r["captions"]) if c == "red region"]
        blues = [b for b, c in zip(r["boxes"], r["captions"]) if c == "blue region"]
        assert reds and blues, (name, r["captions"])
        assert max(iou(b, p["red"]) for b in reds) > 0.2, name
        assert max(iou(b, p["blue"]) for b in blues) > 0.2, name
        assert all(iou(b, p["red"]) > 0 for b in reds), name


def test_overlays_exist_differ_and_viewer_written(main_run, data):
    d, by = results_by_name(main_run["out"])
    for name in data["sizes"]:
        vis = os.path.join(main_run["out"], "vis", by[name]["name"] + ".jpg")
        assert os.path.isfile(vis), vis
        v = read_image(vis)
        src = read_image(os.path.join(main_run["dir"], name))
        assert abs(v.shape[1] / v.shape[0] - src.shape[1] / src.shape[0]) < 0.05, "overlay keeps the displayed aspect"
        assert 512 <= max(v.shape[:2]) <= 2048
        import cv2

        ref = cv2.resize(src, (v.shape[1], v.shape[0]), interpolation=cv2.INTER_AREA)
        assert np.abs(v.astype(np.int16) - ref).mean() > 2.0, f"{name}: overlay looks like the input"
    html = open(os.path.join(main_run["out"], "index.html"), encoding="utf-8").read()
    assert "densecap-data" in html and "rgb.jpg" in html


def test_extract_features_round_trip(main_run):
    d, _ = results_by_name(main_run["out"])
    for r in d["results"]:
        f = load_features(os.path.join(main_run["out"], "features", r["name"] + ".npz"))
        n = len(r["boxes"])
        assert f["boxes"].dtype == np.float32 and f["boxes"].shape == (n, 4)
        np.testing.assert_array_equal(f["boxes"], np.asarray(r["boxes"], np.float32))
        np.testing.assert_array_equal(f["scores"], np.asarray(r["scores"], np.float32))
        assert f["captions"] == r["captions"]
        assert f["region_codes"].dtype == np.float32 and f["region_codes"].shape == (n, 8)
        assert np.isfinite(f["region_codes"]).all()
        assert f["image_size"] == (r["height"], r["width"]) and f["img_name"] == r["img_name"]
        # the fake model's code[:, 5:7] is the box size relative to the image: consistent with boxes
        np.testing.assert_allclose(f["region_codes"][:, 5], f["boxes"][:, 2] / r["width"], atol=0.01)
        with np.load(os.path.join(main_run["out"], "features", r["name"] + ".npz")) as z:  # no pickle needed
            assert z["captions"].dtype.kind == "U"


# ------------------------------------------------------------------------------------------
# --boxes, EXIF frame, batching
# ------------------------------------------------------------------------------------------
def test_given_boxes_exact_order_and_displayed_frame(data, tmp_path):
    p = data["patches"]
    boxes = {}
    for name in data["sizes"]:
        # blue first, then red, then an odd decimal box: output must keep this order and these numbers
        boxes[name] = [p[name]["blue"], p[name]["red"], [1.1, 2.2, 3.3, 4.4]]
    boxes["rgb.jpg"] = []  # no boxes at all: no regions
    key_by_path = os.path.join(data["good"], "palette.png")  # keys may also be paths
    boxes[key_by_path] = boxes.pop("palette.png")
    bf = tmp_path / "boxes.json"
    bf.write_text(json.dumps(boxes))
    out = str(tmp_path / "out")
    run_fake(["--input", data["good"], "--output", out, "--boxes", str(bf), "--batch-size", "3"])
    d, by = results_by_name(out)
    check_schema(d)
    for name in data["sizes"]:
        r = by[name]
        key = key_by_path if name == "palette.png" else name
        assert r["boxes"] == boxes[key], name  # exactly, in order
        assert r["given_boxes"] is True
        if name == "rgb.jpg":
            assert r["captions"] == [] and r["scores"] == []
            continue
        if name in ("grey.png", "deep16.png"):
            assert r["captions"][:2] == ["black region", "gray region"], (name, r["captions"])
        else:
            assert r["captions"][:2] == ["blue region", "red region"], (name, r["captions"])
    # EXIF: the file is stored 300x180 sideways; the displayed frame is 180 wide, 300 high
    r = by["exif_rot.jpg"]
    assert (r["width"], r["height"]) == (180, 300)


def test_boxes_file_errors(data, tmp_path, capsys):
    bf = tmp_path / "bad_boxes.json"
    bf.write_text(json.dumps({"rgb.jpg": [[0, 0, -5, 10]]}))
    rc = main(["--weights", "unused.pth", "--input", data["good"], "--output", str(tmp_path / "o"), "--boxes", str(bf)])
    assert rc == 2 and "negative" in capsys.readouterr().err
    bf.write_text("{not json")
    rc = main(["--weights", "unused.pth", "--input", data["good"], "--output", str(tmp_path / "o"), "--boxes", str(bf)])
    assert rc == 2 and "not valid JSON" in capsys.readouterr().err


def test_batch_size_does_not_change_results(data, tmp_path):
    import shutil

    d = tmp_path / "same"
    d.mkdir()
    for i in range(3):  # same size: these really share a forward pass
        img, _ = scene(320, 240)
        img[i * 10:(i * 10) + 30, 200:260] = (230, 220, 40)
        from PIL import Image

        Image.fromarray(img).save(d / f"s{i}.png")
    for n in ("rgb.jpg", "exif_rot.jpg", "tiny.png", "cmyk.jpg"):
        shutil.copy(os.path.join(data["good"], n), d / n)
    outs = {}
    for bs in (1, 4):
        model = FakeDenseCapModel()
        run_fake(["--input", str(d), "--output", str(tmp_path / f"b{bs}"), "--batch-size", str(bs), "--no-vis"], model=model)
        outs[bs] = results_by_name(str(tmp_path / f"b{bs}"))[1]
        if bs == 1:
            assert set(model.batch_sizes) == {1}
        else:
            assert max(model.batch_sizes) >= 3, model.batch_sizes  # the same-size images were batched
    assert sorted(outs[1]) == sorted(outs[4])
    for name in outs[1]:
        a, b = outs[1][name], outs[4][name]
        assert a["captions"] == b["captions"], name
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-4)
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6)


# ------------------------------------------------------------------------------------------
# inputs: globs, recursion, name collisions, videos, webcam
# ------------------------------------------------------------------------------------------
def test_globs_recursion_and_name_collisions(tmp_path):
    from PIL import Image

    img, _ = scene(64, 48)
    for sub in ("a", "b", "b/deep"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / sub / "x.jpg")
    Image.fromarray(img).save(tmp_path / "a" / "x.png")
    flat = collect_inputs([str(tmp_path / "b")])
    assert [os.path.basename(p) for p in flat.images] == ["x.jpg"]
    rec = collect_inputs([str(tmp_path / "b")], recursive=True)
    assert len(rec.images) == 2
    g = collect_inputs([str(tmp_path / "*" / "x.jpg"), str(tmp_path / "nomatch*.jpg")])
    assert len(g.images) == 2 and g.errors == [(str(tmp_path / "nomatch*.jpg"), "no file matches this pattern")]
    out = str(tmp_path / "out")
    run_fake(["--input", str(tmp_path / "**" / "x.*"), str(tmp_path / "a" / "x.jpg"), "--output", out])
    d, _ = results_by_name(out)
    names = sorted(r["name"] for r in d["results"])
    assert len(names) == 4 and len(set(names)) == 4, names  # a/x.jpg given twice: processed once
    assert sorted(r["img_name"] for r in d["results"]) == ["x.jpg", "x.jpg", "x.jpg", "x.png"]
    for n in names:
        assert os.path.isfile(os.path.join(out, "vis", n + ".jpg"))
    assert unique_names(["/p/a/1.jpg", "/p/b/1.jpg", "/p/a/1.png", "/q/2.jpg"]) == ["a__1", "b__1", "a__1_png", "2"]
    assert image_id_from_name("/x/00042.jpg") == 42 and image_id_from_name("img_1.jpg") is None


def test_video_every_nth_frame_and_broken_video(tmp_path):
    import cv2

    path = str(tmp_path / "clip.avi")
    vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    assert vw.isOpened()
    for i in range(10):
        img, _ = scene(160, 120)
        img[:, :, :] = (30, 40, 220) if i % 2 else (220, 30, 30)  # odd frames blue, even red
        vw.write(np.ascontiguousarray(img[:, :, ::-1]))
    vw.release()
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 10)
    out = str(tmp_path / "out")
    summary = run_fake(["--input", path, str(tmp_path / "broken.mp4"), "--video-stride", "3", "--output", out])
    d, by = results_by_name(out)
    check_schema(d)
    assert [r["frame_index"] for r in d["results"]] == [0, 3, 6, 9]
    assert [r["img_name"] for r in d["results"]] == ["clip.avi#0", "clip.avi#3", "clip.avi#6", "clip.avi#9"]
    for r in d["results"]:
        expect = "blue region" if r["frame_index"] % 2 else "red region"
        assert r["captions"][0] == expect and (r["width"], r["height"]) == (160, 120)
        assert r["file_name"] is None and r["source"] == path
        assert os.path.isfile(os.path.join(out, "vis", r["name"] + ".jpg"))
        assert os.path.isfile(os.path.join(out, "images", r["name"] + ".jpg"))  # for the viewer
    assert [os.path.basename(e["path"]) for e in d["errors"]] == ["broken.mp4"]
    assert summary["images"] == 4
    out2 = str(tmp_path / "out2")
    run_fake(["--input", path, "--max-frames", "2", "--output", out2, "--no-vis"])
    d2, _ = results_by_name(out2)
    assert [r["frame_index"] for r in d2["results"]] == [0, 1]
    assert not os.path.exists(os.path.join(out2, "vis")) and not os.path.exists(os.path.join(out2, "index.html"))


def test_webcam_that_cannot_open_is_reported(tmp_path, monkeypatch):
    import cv2

    class NoCamera:
        def __init__(self, *a, **k):
            pass

        def isOpened(self):
            return False

        def release(self):
            pass

    monkeypatch.setattr(cv2, "VideoCapture", NoCamera)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = str(tmp_path / "out")
    summary = run_fake(["--webcam", "7", "--output", out])
    d, _ = results_by_name(out)
    assert summary["images"] == 0 and d["errors"][0]["path"] == "webcam:7"
    assert "cannot open" in d["errors"][0]["error"]


# ------------------------------------------------------------------------------------------
# image caption hook, escaping, drawing
# ------------------------------------------------------------------------------------------
def test_image_caption_flag(data, tmp_path, capsys):
    with pytest.raises(ValueError, match="no whole-image caption head"):
        DenseCapPredictor(FakeDenseCapModel(), image_caption=True)
    out = str(tmp_path / "out")
    run_fake(["--input", os.path.join(data["good"], "rgb.jpg"), "--output", out, "--image-caption"],
             model=FakeDenseCapModel(with_image_caption=True))
    _, by = results_by_name(out)
    assert by["rgb.jpg"]["image_caption"].startswith("an image with") and by["rgb.jpg"]["image_caption_logprob"] == -1.5


def test_html_escaping_of_captions_and_file_names(tmp_path):
    from PIL import Image

    evil_caption = '</script><script>window.PWNED=1</script> "quoted" \'single\' & <b>bold</b>'
    d = tmp_path / "in"
    d.mkdir()
    evil_name = 'a<b>&"\'</script>.png'
    img, _ = scene(120, 90)
    Image.fromarray(img).save(d / evil_name)
    out = str(tmp_path / "out")
    run_fake(["--input", str(d), "--output", out], model=FakeDenseCapModel(caption_template=evil_caption + " {colour}"))
    html = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    assert "PWNED=1</script>" not in html and "<b>bold" not in html and evil_name not in html
    m = re.search(r'<script type="application/json" id="densecap-data">(.*?)</script>', html, re.S)
    data = json.loads(m.group(1))  # the embedded JSON decodes back to the exact strings
    assert data["images"][0]["img_name"] == evil_name
    assert data["images"][0]["captions"][0].startswith(evil_caption)
    assert html.count("</script>") == 2  # the data element and the code element, nothing injected
    assert embed_json({"s": "</script><!--\u2028"}) == '{"s":"\\u003c/script\\u003e\\u003c!--\\u2028"}'


def test_overlay_labels_stay_inside_and_scale_with_the_image():
    from densecap.inference.visualize import layout

    heights = {}
    for w, h in ((40, 30), (640, 480), (4000, 3000), (3000, 200)):
        img = np.full((h, w, 3), 128, np.uint8)
        boxes = np.array([[0, 0, w, h], [w * 0.9, h * 0.9, w * 0.1, h * 0.1], [-10, -10, w * 0.3, h * 0.3],
                          [w * 0.5, 0, w * 0.5, h * 0.1]], np.float32)
        caps = ["a caption that is rather long for such a tiny image indeed"] + ["red car", "tree", "sky"]
        lay = layout((h, w), boxes, caps, topk=10)
        ch, cw = lay.canvas_size
        assert 512 <= max(ch, cw) <= 2048 and abs(cw / ch - w / h) < 0.02
        for lab in lay.labels:  # fully inside the canvas
            assert 0 <= lab.x and lab.x + lab.w <= cw and 0 <= lab.y and lab.y + lab.h <= ch, (w, h, lab)
        assert lay.labels[0].text.endswith("...") or lay.labels[0].w < cw
        rects = [lab.rect for lab in lay.labels]
        overlaps = sum(not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])
                       for i, a in enumerate(rects) for b in rects[i + 1:])
        assert overlaps == 0, (w, h, rects)
        heights[(w, h)] = lay.labels[1].text_h / max(ch, cw)
        canvas = draw_dense_captions(img, boxes, caps, topk=10)
        assert canvas.shape[:2] == (ch, cw)
        lab = lay.labels[1]  # the label is filled with its box colour
        patch = canvas[lab.y + 1:lab.y + lab.h - 1, lab.x + 1:lab.x + 3].reshape(-1, 3)
        assert (np.abs(patch.astype(int) - palette(4)[1]).sum(1) < 40).mean() > 0.8
    # text height follows the canvas size (readable on small and large images alike)
    vals = list(heights.values())
    assert max(vals) / min(vals) < 1.6, heights
    cols = palette(20)
    assert len(set(cols)) == 20 and min(
        sum(abs(a - b) for a, b in zip(c1, c2)) for i, c1 in enumerate(cols) for c2 in cols[i + 1:]) > 20
