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
import urllib.parse

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fake_model import FakeDenseCapModel, save_tiny_checkpoint  # noqa: E402
from infer_images import make_bad_inputs, make_good_images, scene  # noqa: E402

from densecap.data.image_io import read_image  # noqa: E402
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
# the main run: the real command line on a tiny random real model, every image mode plus every
# bad input in one folder
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pth")
    save_tiny_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def mixed_dir(data, tmp_path_factory):
    import shutil

    mixed = tmp_path_factory.mktemp("mixed")
    for d in (data["good"], data["bad"]):
        for n in os.listdir(d):
            src = os.path.join(d, n)
            (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(mixed, n))
    return str(mixed)


def run_main(argv):
    """tools/infer.py's main() with stdout/stderr captured; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    err, so = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(so):
        rc = main(["--no-progress", *argv])
    return rc, so.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def main_run(ckpt, mixed_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out_main"))
    rc, so, err = run_main(["--weights", ckpt, "--input", mixed_dir, "--output", out, "--extract-features", "--topk", "5"])
    return {"dir": mixed_dir, "out": out, "rc": rc, "stderr": err, "stdout": so}


def test_results_schema_and_summary(main_run, data):
    assert main_run["rc"] == 0
    d, by = results_by_name(main_run["out"])
    check_schema(d)
    assert sorted(by) == sorted(data["sizes"]), "every good image captioned, nothing else"
    n_boxes = 0
    for name, (w, h) in data["sizes"].items():
        r = by[name]
        assert (r["width"], r["height"]) == (w, h), name  # the displayed size (EXIF applied)
        b = np.asarray(r["boxes"]).reshape(-1, 4)
        n_boxes += len(b)
        assert len(b) <= 50  # num proposals of the checkpoint's config
        if len(b):
            assert b[:, 0].min() >= 0 and b[:, 1].min() >= 0 and b[:, 2].min() >= 0 and b[:, 3].min() >= 0
            assert (b[:, 0] + b[:, 2]).max() <= w + 1e-3 and (b[:, 1] + b[:, 3]).max() <= h + 1e-3
        assert r["file_name"] == os.path.join(main_run["dir"], name)
        assert r["given_boxes"] is False
        assert all(c.split() and len(c.split()) <= 6 for c in r["captions"])  # MAX_TOKENS 6
    assert n_boxes > 0
    assert by["1234.png"]["image_id"] == 1234 and by["rgb.jpg"]["image_id"] is None
    assert len({r["name"] for r in d["results"]}) == len(d["results"])
    o = d["opt"]
    assert (o["image_size"], o["num_proposals"], o["final_nms"], o["rpn_nms"], o["topk"]) == (128, 50, 0.3, 0.7, 5)
    line = main_run["stdout"].strip().splitlines()[-1]
    n_ok, n_bad = len(data["sizes"]), len(data["bad_words"])
    assert re.match(rf"done: {n_ok} images captioned, {n_bad} failed, [0-9.]+ s/image", line), line


def test_every_bad_input_reported_not_fatal(main_run, data):
    d, _ = results_by_name(main_run["out"])
    errors = {os.path.basename(e["path"]): e for e in d["errors"]}
    assert set(errors) == set(data["bad_words"]), errors  # notes.txt is silently not an image name
    for name, word in data["bad_words"].items():
        assert word in errors[name]["error"], (name, errors[name])
        assert errors[name]["path"] == os.path.join(main_run["dir"], name)
        assert os.path.join(main_run["dir"], name) in main_run["stderr"], f"{name} not reported on stderr"


def test_overlays_exist_differ_and_viewer_written(main_run, data):
    import cv2

    d, by = results_by_name(main_run["out"])
    for name in data["sizes"]:
        vis = os.path.join(main_run["out"], "vis", by[name]["name"] + ".jpg")
        assert os.path.isfile(vis), vis
        v = read_image(vis)
        src = read_image(os.path.join(main_run["dir"], name))
        assert abs(v.shape[1] / v.shape[0] - src.shape[1] / src.shape[0]) < 0.05, "overlay keeps the displayed aspect"
        assert 512 <= max(v.shape[:2]) <= 2048
        ref = cv2.resize(src, (v.shape[1], v.shape[0]), interpolation=cv2.INTER_AREA)
        assert np.abs(v.astype(np.int16) - ref).mean() > 2.0, f"{name}: overlay looks like the input"
    html = open(os.path.join(main_run["out"], "index.html"), encoding="utf-8").read()
    m = re.search(r'<script type="application/json" id="densecap-data">(.*?)</script>', html, re.S)
    page = json.loads(m.group(1))
    assert [e["img_name"] for e in page["images"]] == [r["img_name"] for r in d["results"]]
    assert page["topk"] == 5 and len(page["errors"]) == len(data["bad_words"])
    copied = {"cmyk.jpg", "deep16.png"}  # browsers do not show these like read_image: JPEG copies
    for e in page["images"]:  # image URLs relative to the page resolve to the originals or copies
        path = os.path.normpath(os.path.join(main_run["out"], urllib.parse.unquote(e["src"])))
        assert os.path.isfile(path)
        if e["img_name"] in copied:
            assert path == os.path.join(main_run["out"], "images", e["name"] + ".jpg")
            assert read_image(path).shape[:2] == (e["height"], e["width"])
        else:
            assert path == os.path.join(main_run["dir"], e["img_name"])


def test_extract_features_round_trip(main_run):
    d, _ = results_by_name(main_run["out"])
    for r in d["results"]:
        f = load_features(os.path.join(main_run["out"], "features", r["name"] + ".npz"))
        n = len(r["boxes"])
        assert f["boxes"].dtype == np.float32 and f["boxes"].shape == (n, 4)
        np.testing.assert_array_equal(f["boxes"], np.asarray(r["boxes"], np.float32).reshape(n, 4))
        np.testing.assert_array_equal(f["scores"], np.asarray(r["scores"], np.float32))
        np.testing.assert_array_equal(f["caption_logprobs"], np.asarray(r["caption_logprobs"], np.float32))
        assert f["captions"] == r["captions"]
        assert f["region_codes"].dtype == np.float32 and f["region_codes"].shape == (n, 32)  # MODEL.ROI.FC_DIM
        assert np.isfinite(f["region_codes"]).all()
        assert f["image_size"] == (r["height"], r["width"]) and f["img_name"] == r["img_name"]
        with np.load(os.path.join(main_run["out"], "features", r["name"] + ".npz")) as z:  # no pickle needed
            assert z["captions"].dtype.kind == "U"


def test_region_codes_match_the_model(ckpt, data):
    """The stored region codes are the ones the language model captions from: re-generating from
    them gives the same captions and log-probabilities."""
    import torch

    pred = DenseCapPredictor.from_checkpoint(ckpt)
    p = pred(os.path.join(data["good"], "rgb.jpg"))
    assert len(p) > 0
    tokens, logprobs = pred.model.caption_head.generate(torch.from_numpy(p.region_codes), beam_size=1, max_len=6)
    assert [pred.vocab.decode_str(t.tolist()) for t in tokens] == p.captions
    np.testing.assert_allclose(logprobs.numpy(), p.caption_logprobs, rtol=1e-5, atol=1e-5)


def test_test_time_options_reach_the_model(ckpt, data, tmp_path):
    out = str(tmp_path / "o")
    rc, _, _ = run_main(["--weights", ckpt, "--output", out, "--no-vis", "--num-proposals", "4",
                         "--final-nms", "0.9", "--rpn-nms", "0.5", "--beam-size", "2", "--image-size", "96",
                         "--score-thresh", "0.3", "--input", *[os.path.join(data["good"], n) for n in ("rgb.jpg", "big.jpg")],
                         "TEST.DETECTIONS_PER_IMAGE", "3"])
    assert rc == 0
    d, _ = results_by_name(out)
    o = d["opt"]
    assert (o["num_proposals"], o["final_nms"], o["rpn_nms"], o["beam_size"], o["image_size"], o["score_thresh"],
            o["detections_per_image"]) == (4, 0.9, 0.5, 2, 96, 0.3, 3)
    assert len(d["results"]) == 2
    for r in d["results"]:
        assert len(r["boxes"]) <= 3 and all(s >= 0.3 for s in r["scores"])


def test_config_file_replaces_the_checkpoint_config(ckpt, data, tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(  # the tiny model's architecture (fake_model.TINY_OPTS) with other test-time values
        "MODEL:\n"
        "  BACKBONE: {NAME: small_cnn, WIDTH: 8, NORM: GN}\n"
        "  RPN: {HEAD_CHANNELS: 16, PRE_NMS_TOPK_TEST: 300, POST_NMS_TOPK_TEST: 50}\n"
        "  ROI: {FC_DIM: 32, NMS_THRESH_TEST: 0.45}\n"
        "  CAPTION: {EMBED_SIZE: 16, HIDDEN_SIZE: 16, MAX_TOKENS: 6}\n"
        "INPUT: {MAX_SIZE: 64}\n"
    )
    out = str(tmp_path / "o")
    rc, _, err = run_main(["--config-file", str(cfg_file), "--weights", ckpt, "--input", os.path.join(data["good"], "rgb.jpg"),
                           "--output", out, "--no-vis"])
    assert rc == 0, err
    d, _ = results_by_name(out)
    assert (d["opt"]["image_size"], d["opt"]["final_nms"], d["opt"]["config_file"]) == (64, 0.45, str(cfg_file))


def test_model_errors_are_clear(ckpt, data, tmp_path):
    rc, _, err = run_main(["--weights", str(tmp_path / "missing.pth"), "--input", data["good"], "--output", str(tmp_path / "o")])
    assert rc == 2 and "missing.pth" in err and "not found" in err
    rc, _, err = run_main(["--weights", ckpt, "--input", data["good"], "--output", str(tmp_path / "o"), "--image-caption"])
    assert rc == 2 and "no whole-image caption head" in err
    rc, _, err = run_main(["--weights", ckpt, "--input", str(tmp_path / "nothing_here.jpg"), "--output", str(tmp_path / "o")])
    assert rc == 1 and "nothing_here.jpg: file does not exist" in err
    import torch

    if not torch.cuda.is_available():
        rc, _, err = run_main(["--weights", ckpt, "--input", data["good"], "--output", str(tmp_path / "o"), "--device", "cuda"])
        assert rc == 2 and "CUDA is not available" in err


# ------------------------------------------------------------------------------------------
# frames: boxes land on the displayed pixels (fake model: captions name the colour under a box)
# ------------------------------------------------------------------------------------------
def test_boxes_land_on_the_displayed_pixels_for_every_mode(data, tmp_path):
    """The fake model names each region's colour: the 'red region' detections must overlap the
    red patch of the displayed image, whatever the pixel mode, EXIF rotation or size."""
    out = str(tmp_path / "out")
    run_fake(["--input", data["good"], "--output", out, "--no-vis"])
    _, by = results_by_name(out)
    for name, p in data["patches"].items():
        r = by[name]
        assert (r["width"], r["height"]) == data["sizes"][name]
        if name in ("grey.png", "deep16.png"):
            continue  # no colour; covered by the --boxes test below
        reds = [b for b, c in zip(r["boxes"], r["captions"]) if c == "red region"]
        blues = [b for b, c in zip(r["boxes"], r["captions"]) if c == "blue region"]
        assert reds and blues, (name, r["captions"])
        assert max(iou(b, p["red"]) for b in reds) > 0.2, name
        assert max(iou(b, p["blue"]) for b in blues) > 0.2, name
        assert all(iou(b, p["red"]) > 0 for b in reds), name


def test_given_boxes_caption_the_displayed_frame(data, tmp_path):
    p = data["patches"]
    boxes = {name: [p[name]["blue"], p[name]["red"]] for name in data["sizes"]}
    bf = tmp_path / "boxes.json"
    bf.write_text(json.dumps(boxes))
    out = str(tmp_path / "out")
    run_fake(["--input", data["good"], "--output", out, "--boxes", str(bf), "--batch-size", "3"])
    _, by = results_by_name(out)
    for name in data["sizes"]:
        r = by[name]
        assert r["boxes"] == boxes[name] and r["given_boxes"] is True
        expect = ["black region", "gray region"] if name in ("grey.png", "deep16.png") else ["blue region", "red region"]
        assert r["captions"] == expect, (name, r["captions"])
    # EXIF: the file is stored 300x180 sideways; the displayed frame is 180 wide, 300 high
    assert (by["exif_rot.jpg"]["width"], by["exif_rot.jpg"]["height"]) == (180, 300)


# ------------------------------------------------------------------------------------------
# --boxes and batching on the real model
# ------------------------------------------------------------------------------------------
def test_given_boxes_kept_exactly_and_in_order(ckpt, data, tmp_path):
    boxes = {
        "rgb.jpg": [[200.5, 10.25, 60.125, 40.0], [1.1, 2.2, 3.3, 4.4], [0, 0, 320, 240], [150, 100, 400, 400]],
        os.path.join(data["good"], "exif_rot.jpg"): [[10, 250, 100, 40.7], [5.5, 5.5, 20, 20]],  # keys may be paths
        "tiny.png": [],  # no boxes at all: no regions
    }
    bf = tmp_path / "boxes.json"
    bf.write_text(json.dumps(boxes))
    out = str(tmp_path / "out")
    files = [os.path.join(data["good"], n) for n in ("rgb.jpg", "exif_rot.jpg", "tiny.png", "big.jpg")]
    rc, _, err = run_main(["--weights", ckpt, "--input", *files, "--output", out, "--boxes", str(bf),
                           "--batch-size", "4", "--extract-features", "--no-vis"])
    assert rc == 0
    d, by = results_by_name(out)
    check_schema(d)
    for key, given in boxes.items():
        r = by[os.path.basename(key)]
        assert r["boxes"] == given and r["given_boxes"] is True  # exactly, in order (even past the border)
        assert len(r["captions"]) == len(r["scores"]) == len(given)
        f = load_features(os.path.join(out, "features", r["name"] + ".npz"))
        np.testing.assert_array_equal(f["boxes"], np.asarray(given, np.float32).reshape(-1, 4))
    assert by["big.jpg"]["given_boxes"] is False  # images without an entry are detected as usual


def test_boxes_file_errors(data, tmp_path, capsys):
    bf = tmp_path / "bad_boxes.json"
    for content, message in (
        (json.dumps({"rgb.jpg": [[0, 0, -5, 10]]}), "negative"),
        (json.dumps({"rgb.jpg": [[0, 0, 5]]}), "must be a list of [x, y, w, h]"),
        (json.dumps([[0, 0, 5, 5]]), "expected a JSON object"),
        ("{not json", "not valid JSON"),
    ):
        bf.write_text(content)
        rc = main(["--weights", "unused.pth", "--input", data["good"], "--output", str(tmp_path / "o"), "--boxes", str(bf)])
        assert rc == 2 and message in capsys.readouterr().err, content


@pytest.fixture(scope="module")
def batch_dir(data, tmp_path_factory):
    import shutil

    from PIL import Image

    d = tmp_path_factory.mktemp("same")
    for i in range(3):  # same size: these really share a forward pass
        img, _ = scene(320, 240)
        img[i * 10:(i * 10) + 30, 200:260] = (230, 220, 40)
        Image.fromarray(img).save(d / f"s{i}.png")
    for n in ("rgb.jpg", "exif_rot.jpg", "tiny.png", "cmyk.jpg"):
        shutil.copy(os.path.join(data["good"], n), d / n)
    return str(d)


def test_batch_size_does_not_change_results(ckpt, batch_dir, tmp_path):
    outs = {}
    for bs in (1, 4):
        out = str(tmp_path / f"b{bs}")
        rc, _, _ = run_main(["--weights", ckpt, "--input", batch_dir, "--output", out, "--batch-size", str(bs), "--no-vis"])
        assert rc == 0
        outs[bs] = results_by_name(out)[1]
    assert sorted(outs[1]) == sorted(outs[4]) and len(outs[1]) == 7
    for name in outs[1]:
        a, b = outs[1][name], outs[4][name]
        assert len(a["boxes"]) > 0
        assert a["captions"] == b["captions"], name
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
        np.testing.assert_allclose(a["caption_logprobs"], b["caption_logprobs"], atol=1e-4)


def test_batching_groups_same_size_images(batch_dir, tmp_path):
    model = FakeDenseCapModel()
    run_fake(["--input", batch_dir, "--output", str(tmp_path / "o"), "--batch-size", "7", "--no-vis"], model=model)
    assert sorted(model.batch_sizes) == [1, 1, 5]  # one pass per resized shape, never padded together


def test_predictor_python_api(data):
    """The API region retrieval reuses: paths or arrays in, Prediction (or ImageReadError) out."""
    from densecap.data.image_io import ImageReadError

    model = FakeDenseCapModel()
    pred = DenseCapPredictor(model, image_size=IMAGE_SIZE, batch_size=2)
    paths = [os.path.join(data["good"], n) for n in ("rgb.jpg", "1234.png", "cmyk.jpg")]
    paths.insert(1, os.path.join(data["bad"], "text.jpg"))
    out = pred.predict_paths(paths)
    assert isinstance(out[1], ImageReadError) and "not an image" in str(out[1])
    assert [len(p) for p in (out[0], out[2], out[3])] == [14, 14, 14]
    assert max(model.batch_sizes) <= 2  # never more than batch_size images in one pass
    one = pred(paths[0])
    assert one.captions == out[0].captions and (one.width, one.height) == (320, 240)
    np.testing.assert_array_equal(one.boxes, out[0].boxes)
    assert one.region_codes.shape == (14, 8) and one.caption_tokens.shape == (14, 2)
    arr = read_image(paths[0])
    g = pred(arr, given_boxes=[data["patches"]["rgb.jpg"]["red"]])
    assert g.given_boxes and g.captions == ["red region"] and g.boxes.dtype == np.float64
    with pytest.raises(ValueError, match="negative"):
        pred(arr, given_boxes=[[0, 0, -1, 5]])


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
    (tmp_path / "b" / ".hidden.jpg").write_bytes(b"junk")  # hidden files are not picked up by scans
    (tmp_path / "b" / "named.jpg").mkdir()
    c = collect_inputs([str(tmp_path / "b") + os.sep, str(tmp_path / "b" / "named.jpg") + os.sep])
    assert [os.path.basename(p) for p in c.images] == ["x.jpg"]
    assert [e[1] for e in c.errors] == ["is a directory, not an image file"] * 2  # folder scan + explicit
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
    evil_name = 'a<b>&"\'<script>x.png'
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
        assert 512 <= max(ch, cw) <= 2048 and abs((cw / ch) / (w / h) - 1) < 0.01
        for lab in lay.labels:  # fully inside the canvas
            assert 0 <= lab.x and lab.x + lab.w <= cw and 0 <= lab.y and lab.y + lab.h <= ch, (w, h, lab)
        assert lay.labels[0].text.endswith("...") or lay.labels[0].w < cw
        rects = [lab.rect for lab in lay.labels]
        overlaps = sum(not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])
                       for i, a in enumerate(rects) for b in rects[i + 1:])
        assert overlaps == 0, (w, h, rects)
        heights[(w, h)] = lay.labels[1].text_h / (ch * cw) ** 0.5
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


def test_overlapped_pipeline_writes_what_the_sequential_loop_writes(ckpt, mixed_dir, tmp_path):
    """--workers 2 (decoding ahead, writing behind) vs --workers 0: the same results.json records and
    errors in the same order, the same overlay files; bad inputs still reported, not fatal."""
    outs = {}
    for w in (0, 3):
        out = str(tmp_path / f"w{w}")
        rc, _, err = run_main(["--weights", ckpt, "--input", mixed_dir, "--output", out, "--workers", str(w),
                               "--batch-size", "2"])
        assert rc == 0
        outs[w] = (load_results(os.path.join(out, "results.json")), out)
    (a, da), (b, db) = outs[0], outs[3]
    assert a["results"] == b["results"] and len(a["results"]) > 3
    assert a["errors"] == b["errors"] and len(a["errors"]) > 1
    assert sorted(os.listdir(os.path.join(da, "vis"))) == sorted(os.listdir(os.path.join(db, "vis")))
    for n in os.listdir(os.path.join(da, "vis")):
        with open(os.path.join(da, "vis", n), "rb") as f1, open(os.path.join(db, "vis", n), "rb") as f2:
            assert f1.read() == f2.read(), n


def test_pipeline_helpers_keep_order_and_isolate_write_errors():
    from densecap.inference.inputs import InputItem
    from densecap.inference.pipeline import OrderedSink, prefetch

    items = [InputItem(name=str(i), img_name=str(i), image=np.full((2, 2, 3), i, np.uint8)) for i in range(20)]
    got = [int(img[0, 0, 0]) for _, img in prefetch(items, workers=3, depth=4)]
    assert got == list(range(20))
    seen, errors = [], []

    def job(i):
        if i == 5:
            raise OSError("disk full")
        seen.append(i)

    sink = OrderedSink(enabled=True, depth=2, on_error=lambda k, e: errors.append((k, str(e))))
    for i in range(10):
        sink.submit(i, job, i)
    sink.close()
    assert seen == [0, 1, 2, 3, 4, 6, 7, 8, 9] and errors == [(5, "disk full")]
