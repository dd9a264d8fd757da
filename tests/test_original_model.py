"""The original DenseCap (Torch7) checkpoints, converted and run as the original's run_model.lua.

Fixtures: ``tests/fixtures/torch7/narrow_seed1`` (a copy kept in the repository) and every
``narrow_*`` folder of ``<repo>/../shared/reference/torch7/`` (checkpoints written by the original
Lua code, with ``run_model.lua``'s unchanged output): each must give, for every image, the same
boxes (<= 0.01 px in original-image pixels), the same captions in the same order and the same
scores (sigmoid of the original's logits) in the original's order.
"""
import glob
import json
import os
import shutil
import struct
import zipfile

import numpy as np
import pytest
import torch

from densecap.modeling.original import ops
from densecap.modeling.original.convert import (
    ORIGINAL_CONFIG, cached_conversion, convert_torch7_checkpoint, is_torch7_path, original_config,
)
from densecap.modeling.original.torch7 import Torch7FormatError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_FIXTURE = os.path.join(ROOT, "tests", "fixtures", "torch7", "narrow_seed1")
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "reference", "torch7")


def _fixtures():
    found = [REPO_FIXTURE]
    found += sorted(p for p in glob.glob(os.path.join(SHARED, "narrow_*")) if os.path.isfile(os.path.join(p, "checkpoint.t7")))
    return found


FIXTURES = _fixtures()
IDS = [("repo:" if p == REPO_FIXTURE else "shared:") + os.path.basename(p) for p in FIXTURES]
INTERMEDIATE_FIXTURES = [p for p in FIXTURES if os.path.isfile(os.path.join(p, "intermediates", "intermediates.json"))]
INTERMEDIATE_IDS = [IDS[FIXTURES.index(p)] for p in INTERMEDIATE_FIXTURES]


def _image_hw(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size[1], im.size[0]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """fixture dir -> (converted .pth path, checkpoint dict), converted once per module."""
    cache = {}

    def get(fixture):
        if fixture not in cache:
            out = str(tmp_path_factory.mktemp("conv") / "model.pth")
            cache[fixture] = (out, convert_torch7_checkpoint(os.path.join(fixture, "checkpoint.t7"), out))
        return cache[fixture]

    return get


# ---- the end-to-end check against run_model.lua ------------------------------------------------
@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_infer_t7_matches_run_model(fixture, tmp_path, caplog):
    from densecap.inference.cli import main

    t7 = tmp_path / "weights" / "densecap-narrow.t7"
    t7.parent.mkdir()
    shutil.copy(os.path.join(fixture, "checkpoint.t7"), t7)
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        rc = main(["--weights", str(t7), "--input", os.path.join(fixture, "images"), "--output", str(out)])
    assert rc == 0
    assert any("converting the Torch7 checkpoint" in r.getMessage() for r in caplog.records)
    cached = glob.glob(str(t7.parent / "densecap-narrow.converted-*.pth"))
    assert len(cached) == 1  # converted once, next to the file (writable folder)
    ours = {r["img_name"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    ref = json.load(open(os.path.join(fixture, "run_model_output", "results.json")))["results"]
    assert sorted(ours) == sorted(r["img_name"] for r in ref)
    for r in ref:
        o = ours[r["img_name"]]
        hw = _image_hw(os.path.join(fixture, "images", r["img_name"]))
        rhw = ops.torch7_scale_size(hw[0], hw[1], 720)
        ref_boxes = ops.original_to_image_pixels(np.array(r["boxes"], dtype=np.float64).reshape(-1, 4), rhw, hw)
        assert len(o["boxes"]) == len(ref_boxes), r["img_name"]
        np.testing.assert_allclose(np.array(o["boxes"]), ref_boxes, atol=0.01, rtol=0, err_msg=r["img_name"])
        assert o["captions"] == r["captions"], r["img_name"]
        ref_scores = 1.0 / (1.0 + np.exp(-np.array(r["scores"], dtype=np.float64)))
        np.testing.assert_allclose(np.array(o["scores"]), ref_scores, atol=1e-5, rtol=0, err_msg=r["img_name"])
        assert np.all(np.diff(np.array(r["scores"])) <= 0) and np.all(np.diff(np.array(o["scores"])) <= 1e-7)
        assert (o["width"], o["height"]) == (hw[1], hw[0])
    # a second run reuses the cached conversion
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(["--weights", str(t7), "--input", os.path.join(fixture, "images", ref[0]["img_name"]),
                     "--output", str(tmp_path / "out2")]) == 0
    assert not any("converting the Torch7 checkpoint" in r.getMessage() for r in caplog.records)


# ---- layer by layer ------------------------------------------------------------------------------
def _run_layers(fixture, converted):
    from densecap.engine.checkpoint import build_model_from_checkpoint
    from densecap.data.image_io import read_image

    path, _ = converted(fixture)
    model, _ = build_model_from_checkpoint(path)
    meta = json.load(open(os.path.join(fixture, "intermediates", "intermediates.json")))
    img = read_image(os.path.join(fixture, "images", meta["image"]))
    resized, _ = model.resize_image(img, 720)
    x = {"image": torch.from_numpy(resized).permute(2, 0, 1), "height": img.shape[0], "width": img.shape[1]}
    images, _ = model.preprocess_image([x])
    with torch.no_grad():
        out = model.forward_original(images, x, debug=True)
    return meta, out


def _npy(fixture, name):
    p = os.path.join(fixture, "intermediates", "npy", name + ".npy")
    return np.load(p) if os.path.isfile(p) else None


@pytest.mark.parametrize("fixture", INTERMEDIATE_FIXTURES, ids=INTERMEDIATE_IDS)
def test_layers_match_original_intermediates(fixture, converted):
    meta, out = _run_layers(fixture, converted)
    d = {k: v.numpy() for k, v in out["debug"].items()}
    assert list(d["conv_net2_out"].shape[-2:]) == [int(np.ceil(s / 16)) for s in meta["image_hw_after_scale"]]
    ref = _npy(fixture, "conv_net2_out")
    np.testing.assert_allclose(d["conv_net2_out"], ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())), rtol=0)
    # proposals: same set; same place except where near-equal RPN scores swap neighbours
    ref = _npy(fixture, "rpn_boxes_nms")
    ours = d["rpn_boxes_nms"]
    assert ours.shape == ref.shape == (meta["num_after_rpn_nms"], 4)
    in_place = np.abs(ours - ref).max(axis=1) <= 0.01
    assert in_place.mean() >= 0.99
    dist = np.abs(ours[:, None, :] - ref[None, :, :]).max(axis=2)  # P P
    assert (dist.min(axis=1) <= 0.01).all() and (dist.min(axis=0) <= 0.01).all()
    rows = np.nonzero(in_place)[0]
    first = _npy(fixture, "roi_features_first")
    k = first.shape[0]
    if in_place[:k].all():
        np.testing.assert_allclose(d["roi_features"][:k], first, atol=1e-4 * max(1.0, float(np.abs(first).max())), rtol=0)
    for name in ("recog_codes", "objectness_pre_nms", "final_boxes_pre_nms"):
        ref = _npy(fixture, name)
        tol = 0.01 if name == "final_boxes_pre_nms" else 1e-4 * max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(d[name][rows].reshape(len(rows), -1), ref[rows].reshape(len(rows), -1), atol=tol,
                                   rtol=0, err_msg=name)
    # greedy captions of every proposal (original ids -> project ids), up to the first END
    seq = _npy(fixture, "lm_seq_pre_nms")
    ck = converted(fixture)[1]
    words = ck["source"]["original"]["idx_to_token"]
    tok = ck["vocab"]["idx_to_token"]
    to_project = {i + 1: tok.index(w) for i, w in enumerate(words)}
    end = len(words) + 1
    for r in rows:
        want = []
        for t in seq[r]:
            if t == end or t == 0:
                break
            want.append(to_project[int(t)])
        got = [int(t) for t in d["lm_seq_pre_nms"][r] if t != 0]
        assert got == want, f"proposal {r}"
    # final output
    inst = out["instances"]
    fx = _npy(fixture, "final_boxes_xywh")
    assert len(inst) == meta["num_final"] == len(fx)
    np.testing.assert_allclose(inst.boxes_resized_xywh.numpy(), fx, atol=0.01, rtol=0)
    np.testing.assert_allclose(inst.objectness_logits.numpy(), _npy(fixture, "final_scores")[:, 0], atol=1e-4, rtol=0)


# ---- conversion details ---------------------------------------------------------------------------
def test_converted_checkpoint_contents(converted):
    path, ck = converted(REPO_FIXTURE)
    assert set(ck) >= {"model", "cfg", "vocab", "iteration", "source"}
    src = ck["source"]
    assert src["file_name"] == "checkpoint.t7" and src["size_bytes"] == os.path.getsize(os.path.join(REPO_FIXTURE, "checkpoint.t7"))
    assert len(src["sha256"]) == 64 and src["converter_version"]
    assert src["original"]["conv_widths"] == [8, 16, 32, 64, 64]
    assert src["original"]["anchors_wh"][0] == [45.0, 90.0] and len(src["original"]["anchors_wh"]) == 12
    tok = ck["vocab"]["idx_to_token"]
    assert tok[:4] == ["<PAD>", "<START>", "<END>", "<UNK>"]
    assert len(tok) == 4 + 29  # 30 words, the last one <UNK> (becomes index 3)
    loaded = torch.load(path, map_location="cpu", weights_only=True)  # what the project's loaders do
    assert loaded["cfg"] == ck["cfg"]
    from densecap.engine.checkpoint import cfg_from_checkpoint

    cfg = cfg_from_checkpoint(loaded)
    assert cfg.MODEL.META_ARCHITECTURE == "DenseCapOriginal" and cfg.MODEL.BACKBONE.NAME == "vgg16_original"
    assert cfg.MODEL.CAPTION.MAX_TOKENS == 10 and cfg.MODEL.RPN.HEAD_CHANNELS == 32 and cfg.MODEL.ROI.FC_DIM == 128
    # weights saved on their own, not as views of the file's shared storages
    sd = loaded["model"]
    for k, v in sd.items():
        assert v.untyped_storage().nbytes() == v.numel() * v.element_size(), k
    assert sd["backbone.stages.0.0.weight"].shape == (8, 3, 3, 3)
    assert sd["rpn.head.objectness.weight"].shape == (24, 32, 1, 1)


def test_yaml_config_is_the_converters():
    from densecap.config import load_config

    cfg = load_config(os.path.join(ROOT, "configs", "densecap_vgg16_original.yaml"))
    assert cfg.dump() == original_config().dump()
    assert "MODEL.META_ARCHITECTURE" in ORIGINAL_CONFIG


def test_lstm_gate_order_and_layout():
    """torch-rnn's (D+H, 4H) weight with gate blocks (i, f, o, g) maps onto nn.LSTM exactly."""
    from densecap.modeling.original.convert import _lstm_to_pytorch

    D, H, N = 5, 3, 4
    rng = np.random.RandomState(0)
    w = rng.randn(D + H, 4 * H).astype(np.float32)
    b = rng.randn(4 * H).astype(np.float32)
    x = rng.randn(N, D).astype(np.float32)
    h0 = rng.randn(N, H).astype(np.float32)
    c0 = rng.randn(N, H).astype(np.float32)
    # torch-rnn LSTM.lua, one step
    g = b + x @ w[:D] + h0 @ w[D:]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, f, o, gg = sig(g[:, :H]), sig(g[:, H:2 * H]), sig(g[:, 2 * H:3 * H]), np.tanh(g[:, 3 * H:])
    c1 = f * c0 + i * gg
    h1 = o * np.tanh(c1)
    lstm = torch.nn.LSTM(D, H, batch_first=True)
    sd = {k.replace("caption_head.rnn.", ""): v for k, v in _lstm_to_pytorch(w, b, D, H).items()}
    lstm.load_state_dict(sd)
    with torch.no_grad():
        out, (hn, cn) = lstm(torch.from_numpy(x)[:, None], (torch.from_numpy(h0)[None], torch.from_numpy(c0)[None]))
    np.testing.assert_allclose(hn[0].numpy(), h1, atol=1e-5)
    np.testing.assert_allclose(cn[0].numpy(), c1, atol=1e-5)


def test_zip_download_is_accepted(tmp_path, converted):
    z = tmp_path / "densecap-pretrained-vgg16.t7.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as f:
        f.write(os.path.join(REPO_FIXTURE, "checkpoint.t7"), "densecap-pretrained-vgg16.t7")
    assert is_torch7_path(str(z))
    ck = convert_torch7_checkpoint(str(z))
    ref = converted(REPO_FIXTURE)[1]
    assert ck["source"]["zip_member"] == "densecap-pretrained-vgg16.t7"
    for k, v in ref["model"].items():
        assert torch.equal(ck["model"][k], v), k
    p = cached_conversion(str(z))
    assert os.path.dirname(p) == str(tmp_path) and os.path.isfile(p)
    assert cached_conversion(str(z)) == p


def test_cache_falls_back_to_user_cache(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(os.path.join(REPO_FIXTURE, "checkpoint.t7"), ro / "m.t7")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.path.abspath(p) == str(ro) else real_access(p, mode))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    p = cached_conversion(str(ro / "m.t7"))
    assert os.path.dirname(p) == str(tmp_path / "cache" / "densecap") and os.path.isfile(p)
    assert os.listdir(ro) == ["m.t7"]


def test_convert_cli(tmp_path, capsys):
    from densecap.modeling.original.convert import main

    out = tmp_path / "densecap_vgg16.pth"
    assert main(["--input", os.path.join(REPO_FIXTURE, "checkpoint.t7"), "--output", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    bad = tmp_path / "bad.t7"
    bad.write_bytes(os.urandom(5000))
    assert main(["--input", str(bad), "--output", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Torch7" in err
    assert not (tmp_path / "x.pth").exists()


# ---- bad files -----------------------------------------------------------------------------------
class _T7Writer:
    """A few lines of Torch7 serialisation (torch.save's binary format) for test files."""

    def __init__(self):
        self.buf = bytearray()
        self.n = 0

    def i(self, v):
        self.buf += struct.pack("<i", v)

    def obj(self, v):
        if v is None:
            self.i(0)
        elif isinstance(v, bool):
            self.i(5)
            self.i(int(v))
        elif isinstance(v, (int, float)):
            self.i(1)
            self.buf += struct.pack("<d", float(v))
        elif isinstance(v, str):
            self.i(2)
            self.i(len(v.encode()))
            self.buf += v.encode()
        elif isinstance(v, dict):
            self.i(3)
            self.n += 1
            self.i(self.n)
            self.i(len(v))
            for k, x in v.items():
                self.obj(k)
                self.obj(x)
        elif isinstance(v, tuple) and v[0] == "torch":  # ("torch", class name, table)
            self.i(4)
            self.n += 1
            self.i(self.n)
            for s in ("V 1", v[1]):
                self.i(len(s))
                self.buf += s.encode()
            self.obj(v[2])
        elif isinstance(v, np.ndarray):  # FloatTensor + FloatStorage
            self.i(4)
            self.n += 1
            self.i(self.n)
            for s in ("V 1", "torch.FloatTensor"):
                self.i(len(s))
                self.buf += s.encode()
            self.i(v.ndim)
            self.buf += struct.pack(f"<{v.ndim}q", *v.shape)
            strides = [int(np.prod(v.shape[k + 1:])) for k in range(v.ndim)]
            self.buf += struct.pack(f"<{v.ndim}q", *strides)
            self.buf += struct.pack("<q", 1)
            self.i(4)
            self.n += 1
            self.i(self.n)
            for s in ("V 1", "torch.FloatStorage"):
                self.i(len(s))
                self.buf += s.encode()
            self.buf += struct.pack("<q", v.size)
            self.buf += v.astype("<f4").tobytes()
        else:
            raise TypeError(type(v))


def _t7(path, obj):
    w = _T7Writer()
    w.obj(obj)
    path.write_bytes(bytes(w.buf))
    return str(path)


def test_own_writer_round_trips(tmp_path):
    from densecap.modeling.original.torch7 import get, load_torch7

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    obj = load_torch7(_t7(tmp_path / "x.t7", {"w": a, "name": "x", "m": ("torch", "nn.Linear", {"weight": a})}))
    assert np.array_equal(get(obj, "w"), a) and get(get(obj, "m"), "weight").shape == (2, 3)


def test_random_bytes_are_not_a_torch7_file(tmp_path):
    p = tmp_path / "random.t7"
    p.write_bytes(np.random.RandomState(0).bytes(4096))
    with pytest.raises(Torch7FormatError, match="not a Torch7 file") as e:
        convert_torch7_checkpoint(str(p))
    assert str(p) in str(e.value)
    empty = tmp_path / "empty.t7"
    empty.write_bytes(b"")
    with pytest.raises(Torch7FormatError, match="not a Torch7 file"):
        convert_torch7_checkpoint(str(empty))


@pytest.mark.parametrize("fraction", [0.3, 0.999])
def test_truncated_file(tmp_path, fraction):
    data = open(os.path.join(REPO_FIXTURE, "checkpoint.t7"), "rb").read()
    p = tmp_path / "truncated.t7"
    p.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(Torch7FormatError, match="truncated") as e:
        convert_torch7_checkpoint(str(p))
    assert str(p) in str(e.value)


def test_torch7_file_of_another_model(tmp_path):
    w = np.zeros((4, 3), np.float32)
    other = _t7(tmp_path / "classifier.t7", ("torch", "nn.Sequential", {"modules": {1: ("torch", "nn.Linear", {"weight": w})}}))
    with pytest.raises(Torch7FormatError, match="not a DenseCap checkpoint") as e:
        convert_torch7_checkpoint(other)
    assert "classifier.t7" in str(e.value)
    # a checkpoint table whose model is something else
    p = _t7(tmp_path / "other_ckpt.t7", {"model": ("torch", "nn.Sequential", {"modules": {}}), "iter": 3})
    with pytest.raises(Torch7FormatError, match="checkpoint.model.*DenseCapModel"):
        convert_torch7_checkpoint(p)
    # a DenseCapModel without its language model
    p = _t7(tmp_path / "no_lm.t7", {"model": ("torch", "DenseCapModel", {"nets": {"conv_net1": ("torch", "nn.Sequential", {"modules": {}})}})})
    with pytest.raises(Torch7FormatError, match="missing or unexpected model.nets"):
        convert_torch7_checkpoint(p)


def test_infer_cli_names_a_bad_t7(tmp_path, capsys):
    from densecap.inference.cli import main

    p = tmp_path / "bad.t7"
    p.write_bytes(np.random.RandomState(1).bytes(1000))
    img = glob.glob(os.path.join(REPO_FIXTURE, "images", "*.png"))[0]
    rc = main(["--weights", str(p), "--input", img, "--output", str(tmp_path / "o")])
    assert rc != 0
    err = capsys.readouterr().err
    assert str(p) in err and "Torch7" in err


# ---- the original's own unit tests (jcjohnson/densecap test/*.lua), ported -------------------
def test_box_iou_cases():  # BoxIoU_test.lua
    t = lambda *r: torch.tensor(r, dtype=torch.float64)  # noqa: E731
    assert torch.allclose(ops.box_iou(t([10, 10, 10, 10]), t([15, 15, 10, 10])), t([25 / 175]))
    assert torch.allclose(ops.box_iou(t([10, 10, 5, 5]), t([15, 15, 5, 5])), t([0.0]))
    b1 = t([2, 4, 2, 6], [5, 7.5, 2, 5])
    b2 = t([5, 8, 4, 2], [4.5, 4.5, 5, 3], [4.5, 0, 5, 4])
    assert torch.allclose(ops.box_iou(b1, b2), t([0, 3 / 24, 1 / 31], [4 / 14, 2 / 23, 0]), atol=1e-8)
    b1 = t([4, 2, 2, 6], [6, -2, 2, 2])
    b2 = t([4, 2, 4, 2], [4.5, -1, 3, 2], [6, -2, 4, 4])
    assert torch.allclose(ops.box_iou(b1, b2), t([1 / 4, 1 / 8, 1 / 27], [0, 1 / 9, 1 / 4]), atol=1e-8)


_NMS_BOXES = [[-12, 3, -7, 9], [-9, 7, -4, 13], [-8, 8, -3, 14], [3.5, 4.5, 8.5, 12.5], [-6, -6, -1, -1],
              [4, 5, 9, 13], [4.5, 5.5, 9.5, 13.5]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scores,thresh,expected", [
    ([1, 2, 3, 4, 5, 6, 7], 0.7, [7, 5, 4, 3, 2, 1]),
    ([1, 2, 3, 4, 5, 6, 7], 0.5, [7, 5, 3, 1]),
    ([2.5, 2, 3, 4, 5, 10, 7], 0.7, [6, 5, 3, 1, 2]),
])
def test_nms_cases(dtype, scores, thresh, expected):  # nms_test.lua (1-based indices)
    keep = ops.nms(torch.tensor(_NMS_BOXES, dtype=dtype), torch.tensor(scores, dtype=dtype), thresh)
    assert (keep + 1).tolist() == expected
    assert (ops.nms(torch.tensor(_NMS_BOXES, dtype=dtype), torch.tensor(scores, dtype=dtype), thresh, 2) + 1).tolist() == expected[:2]


def test_nms_ties_follow_torch7_sort():
    # equal scores: the visit order is Torch7's quicksort's, not index order
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    keep = ops.nms(boxes, torch.tensor([0.5, 0.5, 0.1]), 0.7)
    assert len(keep) == 2 and keep[1].item() == 2
    order = ops.th_sort_ascending([0.5, 0.5, 0.1])
    assert keep[0].item() == order[-1]
    vals = list(np.random.RandomState(0).randint(0, 5, size=200).astype(float))
    idx = ops.th_sort_ascending(vals)
    assert [vals[i] for i in idx] == sorted(vals) and sorted(idx) == list(range(200))


def test_apply_and_invert_box_transform_cases():  # ApplyBoxTransform_test.lua, InvertBoxTransform_test.lua
    boxes = torch.tensor([[10, 20, 30, 40], [-30, 50, 100, 200]], dtype=torch.float64)
    trans = torch.tensor([[0.5, -0.2, 0, np.log(2)], [0, -0.5, np.log(0.5), np.log(1.1)]], dtype=torch.float64)
    out = ops.apply_box_transform(boxes, trans)
    assert torch.allclose(out, torch.tensor([[25, 12, 30, 80], [-30, -50, 50, 220]], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(10, 4, generator=g, dtype=torch.float64)
    anchors[:, 2:] = anchors[:, 2:].abs()
    t = torch.randn(10, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(ops.invert_box_transform(anchors, ops.apply_box_transform(anchors, t)), t, atol=1e-6)
    target = torch.randn(10, 4, generator=g, dtype=torch.float64)
    target[:, 2:] = target[:, 2:].abs()
    assert torch.allclose(ops.apply_box_transform(anchors, ops.invert_box_transform(anchors, target)), target, atol=1e-6)


def test_clip_boxes_cases():  # clip_boxes_test.lua: its boxes and bounds (x in [0, 12], y in [0, 15])
    boxes = torch.tensor([[0.5, 8.5, 7, 5], [3.5, -0.5, 9, 7], [9.5, 14.5, 7, 5], [9, 7, 4, 4], [11, 1.5, 2, 3],
                          [13, 1.5, 2, 2], [1, 16, 3, 1], [-5, 1, 3, 1], [-5, -6, 3, 1], [15, 16, 3, 1]], dtype=torch.float64)
    clipped, valid = ops.clip_boxes(boxes, 15, 12, "xcycwh", x_min=0, y_min=0)
    # What box_utils.clip_boxes as released computes: corners xc -/+ (w - 1) / 2, x1 clamped to
    # [0, 11], x2 to [1, 12], back with w = x2 - x1. (The Lua test's own expectations, e.g.
    # {2, 8.5, 4, 5} for the first box and "invalid" for the last five, assume corners xc -/+ w / 2
    # and a validity check before clamping: they predate the released code.)
    expected = [[1.75, 8.5, 3.5, 4], [3.75, 1.25, 7.5, 2.5], [9.25, 13.75, 5.5, 2.5], [9, 7, 3, 3], [11, 1.5, 1, 2],
                [11.5, 1.5, 1, 1], [1, 14.5, 2, 1], [0.5, 1, 1, 0], [0.5, 0.5, 1, 1], [11.5, 14.5, 1, 1]]
    assert clipped.tolist() == expected
    assert valid.tolist() == [True] * 7 + [False, True, True]  # outside boxes become border slivers
    # the localization layer's bounds: [1, W] x [1, H]; a box inside keeps its centre, loses 1 px
    c, v = ops.clip_boxes(torch.tensor([[50.0, 40.0, 21.0, 11.0]]), 100, 200)
    assert c.tolist() == [[50.0, 40.0, 20.0, 10.0]] and v.tolist() == [True]


def test_box_conversion_round_trip():  # box_conversion_test.lua
    g = torch.Generator().manual_seed(0)
    b = torch.randn(100, 4, generator=g, dtype=torch.float64)
    b[:, 2:] = b[:, 2:].abs()
    c = ops.xywh_to_x1y1x2y2(b)
    b2 = ops.x1y1x2y2_to_xywh(c)
    assert torch.allclose(b2, b, atol=1e-6) and torch.allclose(ops.xywh_to_x1y1x2y2(b2), c, atol=1e-6)
    assert ops.xcycwh_to_xywh(torch.tensor([[10.0, 20.0, 5.0, 7.0]])).tolist() == [[8.0, 17.0, 5.0, 7.0]]


def test_box_to_affine_cases():  # BoxToAffine_test.lua
    H, W = 20, 30
    boxes = torch.tensor([[(W + 1) / 2, (H + 1) / 2, W, H], [10, 12, 4, 5], [15, 17, 2, 3],
                          [(W + 1) / 2, (H + 1) / 2, W / 2, H / 2]], dtype=torch.float64)
    expected = torch.tensor([[[1, 0, 0], [0, 1, 0]], [[1 / 4, 0, 3 / 19], [0, 2 / 15, -11 / 29]],
                             [[3 / 20, 0, 13 / 19], [0, 1 / 15, -1 / 29]], [[0.5, 0, 0], [0, 0.5, 0]]], dtype=torch.float64)
    assert torch.allclose(ops.box_to_affine(boxes, H, W), expected, atol=1e-6)
    assert torch.allclose(ops.box_to_affine(boxes.float(), H, W), expected.float(), atol=1e-6)


def test_sampler_affine_boxes():  # BatchBilinearSamplerBHWD_test.lua / BilinearRoiPooling_test.lua
    g = torch.Generator().manual_seed(0)
    C, H, W = 16, 32, 33
    feats = torch.randn(C, H, W, generator=g)
    theta = torch.randn(10, 2, 3, generator=g) * 0.1
    theta[:, 0, 0] += 1
    theta[:, 1, 1] += 1
    grids = ops.affine_grid_bhwd(theta, 7, 8)
    assert grids.shape == (10, 7, 8, 2)
    out = ops.bilinear_sampler_bhwd(feats, grids)
    assert out.shape == (10, C, 7, 8)
    # the same as grid_sample with align_corners=True, zero padding, (x, y) order
    ref = torch.nn.functional.grid_sample(feats[None].expand(10, -1, -1, -1), grids.flip(-1), mode="bilinear",
                                          padding_mode="zeros", align_corners=True)
    assert torch.allclose(out, ref, atol=1e-5)
    # the identity transform reads the map's own pixels at its corners
    ident = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    o = ops.bilinear_sampler_bhwd(feats, ops.affine_grid_bhwd(ident, H, W))
    assert torch.allclose(o[0], feats, atol=1e-5)
    # whole-image box: BoxToAffine gives the identity, so the 7x7 grid spans the map edge to edge
    pooled = ops.bilinear_roi_pooling(feats, torch.tensor([[(W * 16 + 1) / 2, (H * 16 + 1) / 2, W * 16.0, H * 16.0]]),
                                      H * 16, W * 16, 7)
    assert torch.allclose(pooled[0, :, 0, 0], feats[:, 0, 0], atol=1e-5)
    assert torch.allclose(pooled[0, :, -1, -1], feats[:, -1, -1], atol=1e-5)
    for B in (10, 13, 7):
        boxes = torch.randn(B, 4, generator=g)
        assert ops.bilinear_roi_pooling(feats, boxes, H, W, 7).shape == (B, C, 7, 7)
    # the model's fast path (grid_sample on the original's grid) equals the op-by-op sampler
    boxes = torch.rand(50, 4, generator=g) * torch.tensor([W * 16.0, H * 16.0, 200, 200]) + torch.tensor([0, 0, 8, 8])
    fast = ops.bilinear_roi_pooling(feats, boxes, H * 16, W * 16, 7)
    exact = ops.bilinear_roi_pooling(feats, boxes, H * 16, W * 16, 7, exact=True)
    assert torch.allclose(fast, exact, atol=1e-5) and float(exact.abs().sum()) > 0


def test_make_anchors_order():  # MakeAnchors_test.lua (anchors + ReshapeBoxFeatures order)
    wh = torch.tensor([[45.0, 90.0], [64.0, 64.0]])
    a = ops.make_anchors(3, 5, wh, 1, 2, 3, 4)
    assert a.shape == (2 * 3 * 5, 4)
    # index = anchor * H * W + row * W + col
    assert a[1 * 15 + 2 * 5 + 4].tolist() == [1 + 3 * 4, 2 + 4 * 2, 64.0, 64.0]
    assert a[0].tolist() == [1.0, 2.0, 45.0, 90.0]


def test_torch7_image_scale():
    assert ops.torch7_scale_size(427, 300, 720) == (720, 505)
    assert ops.torch7_scale_size(300, 451, 720) == (478, 720)
    assert ops.torch7_scale_size(1000, 1000, 720) == (720, 720)
    img = np.random.RandomState(0).randint(0, 256, size=(5, 4, 3)).astype(np.uint8)
    up = ops.torch7_image_scale(img, 9)  # enlarging: first and last pixels kept
    assert up.shape == (9, 7, 3)
    assert np.allclose(up[0, 0], img[0, 0] / 255.0) and np.allclose(up[-1, -1], img[-1, -1] / 255.0)
    flat = np.full((40, 20, 3), 77, np.uint8)
    down = ops.torch7_image_scale(flat, 9)  # shrinking: area average
    assert down.shape == (9, 4, 3) and np.allclose(down, 77 / 255.0, atol=1e-6)
    ramp = np.tile(np.arange(8, dtype=np.uint8)[None, :, None] * 10, (8, 1, 3))
    half = ops.torch7_image_scale(ramp, 4)  # pairs averaged
    assert np.allclose(half[0, :, 0] * 255, [5, 25, 45, 65], atol=1e-4)


def test_original_config_builds_with_random_weights():
    """``build_model`` on configs/densecap_vgg16_original.yaml (narrow widths to stay fast) runs
    an image end to end with random weights."""
    from densecap.config import load_config
    from densecap.data.tokenizer import Vocabulary
    from densecap.modeling import build_model

    cfg = load_config(os.path.join(ROOT, "configs", "densecap_vgg16_original.yaml"),
                      ["MODEL.ORIGINAL.CONV_WIDTHS", "[8, 8, 16, 16, 16]", "MODEL.RPN.HEAD_CHANNELS", "8",
                       "MODEL.ROI.FC_DIM", "32", "MODEL.CAPTION.EMBED_SIZE", "16", "MODEL.CAPTION.HIDDEN_SIZE", "16",
                       "MODEL.RPN.POST_NMS_TOPK_TEST", "50"])
    torch.manual_seed(0)
    model = build_model(cfg, Vocabulary(["a", "b", "c"])).eval()
    img = np.random.RandomState(0).randint(0, 256, size=(90, 120, 3)).astype(np.uint8)
    resized, scale = model.resize_image(img, 160)
    out = model([{"image": torch.from_numpy(resized).permute(2, 0, 1), "height": 90, "width": 120}])
    inst = out[0]["instances"]
    assert resized.shape == (120, 160, 3) and abs(scale - 120 / 90) < 1e-9
    assert len(inst) == len(inst.pred_captions) == inst.pred_boxes.shape[0] > 0
    assert inst.scores.min() >= 0 and inst.scores.max() <= 1 and bool((inst.scores[:-1] >= inst.scores[1:]).all())
    # the greedy loop's caption log-probabilities are the language model's (END included)
    with torch.no_grad():
        lp = model.caption_head.score(inst.region_codes, inst.pred_caption_tokens)
    assert torch.allclose(inst.pred_caption_logprobs, lp, atol=1e-4)
    model.beam_size = 3  # the project's beam search on the same regions: at least as likely captions
    beam = model([{"image": torch.from_numpy(resized).permute(2, 0, 1), "height": 90, "width": 120}])[0]["instances"]
    assert torch.equal(beam.pred_boxes, inst.pred_boxes)
    assert bool((beam.pred_caption_logprobs >= inst.pred_caption_logprobs - 1e-4).all())


def test_images_are_read_as_the_original_reads_them(tmp_path, converted):
    """The original's image.load(path, 3): no EXIF rotation, the colour channels of a
    transparent image as stored (the project's default composites on white)."""
    from PIL import Image

    from densecap.data.image_io import read_image
    from densecap.inference.predictor import DenseCapPredictor

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent
    p = tmp_path / "t.png"
    Image.fromarray(rgba, "RGBA").save(p)
    assert read_image(str(p))[0, 0].tolist() == [255, 255, 255]
    assert read_image(str(p), alpha="drop")[0, 0].tolist() == [200, 0, 0]
    q = tmp_path / "rot.jpg"
    im = Image.fromarray(np.zeros((4, 6, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90
    im.save(q, exif=exif)
    assert read_image(str(q)).shape[:2] == (6, 4) and read_image(str(q), exif_transpose=False).shape[:2] == (4, 6)
    pred = DenseCapPredictor.from_checkpoint(converted(REPO_FIXTURE)[0])
    assert pred.read(str(p))[0, 0].tolist() == [200, 0, 0] and pred.read(str(q)).shape[:2] == (4, 6)


@pytest.mark.parametrize("fixture", INTERMEDIATE_FIXTURES, ids=INTERMEDIATE_IDS)
def test_anchors_and_box_transform_reproduce_rpn_boxes(fixture, converted):
    """MakeAnchors + ApplyBoxTransform on the original's own deltas give its boxes: the same
    float32 numbers (exp rounded from float64 like the C library's expf) but for a few ulps."""
    t, ref = _npy(fixture, "rpn_trans"), _npy(fixture, "rpn_boxes")
    if t is None or ref is None:
        pytest.skip("fixture without rpn_trans / rpn_boxes")
    src = converted(fixture)[1]["source"]["original"]
    hf, wf = _npy(fixture, "conv_net2_out").shape[-2:]
    anchors = ops.make_anchors(hf, wf, torch.tensor(src["anchors_wh"]), *src["field_centers"])
    ref_anchors = _npy(fixture, "rpn_anchors")
    if ref_anchors is not None:
        assert np.array_equal(anchors.numpy(), ref_anchors[0])
    out = ops.apply_box_transform(anchors, torch.from_numpy(t[0])).numpy()
    assert np.array_equal(out[:, :2], ref[0][:, :2])
    assert (out != ref[0]).mean() < 0.005
    np.testing.assert_allclose(out, ref[0], rtol=2e-7, atol=0)


def test_cudnn_module_classes_are_read(tmp_path, converted):
    """A checkpoint saved with the cudnn backend (cudnn.SpatialConvolution / SpatialMaxPooling:
    same weights) converts to the same model; the class names are rewritten in the stream."""
    data = open(os.path.join(REPO_FIXTURE, "checkpoint.t7"), "rb").read()
    for old in (b"nn.SpatialConvolution", b"nn.SpatialMaxPooling"):
        new = b"cudnn." + old[3:]
        n = data.count(struct.pack("<i", len(old)) + old)
        assert n > 0
        data = data.replace(struct.pack("<i", len(old)) + old, struct.pack("<i", len(new)) + new)
    p = tmp_path / "cudnn.t7"
    p.write_bytes(data)
    ck = convert_torch7_checkpoint(str(p))
    ref = converted(REPO_FIXTURE)[1]
    assert ck["model"].keys() == ref["model"].keys()
    for k, v in ref["model"].items():
        assert torch.equal(ck["model"][k], v), k
