"""The Torch7 writer of the ``convert`` benchmark, at the narrow size of the reference checkpoint
written by the original Lua code (the benchmark writes the same tree at full size)."""
import numpy as np
import pytest
import torchfile

from densecap.benchmarks import torch7_writer as W

FIXTURE = W.reference_checkpoint()


def _read(path):
    return torchfile.load(path, use_list_heuristic=False)


def _f(m, key):
    """A field of a torchfile object, None when absent (torchfile's own lookup fails on a missing
    bytes key)."""
    return m._obj.get(key)


def _module_tree(m, depth=0, out=None):
    """(depth, class, name, parameter shapes) of every module under ``m``, in order."""
    out = [] if out is None else out
    shapes = tuple(tuple(_f(m, k).shape) for k in (b"weight", b"bias") if _f(m, k) is not None and _f(m, k).size)
    out.append((depth, m._typename, _f(m, b"name"), shapes))
    for c in (_f(m, b"modules") or {}).values():
        _module_tree(c, depth + 1, out)
    return out


def _storage_of(arr):
    base = arr
    while base.base is not None:
        base = base.base
    return base


def _parameters(ckpt):
    """(path, weight/bias array) of every parameter in the model, in module order."""
    out = []
    for depth, m in _walk(ckpt[b"model"][b"net"]):
        for k in (b"weight", b"bias", b"gradWeight", b"gradBias"):
            if _f(m, k) is not None and _f(m, k).size:
                out.append((f"{m._typename.decode()}:{(_f(m, b'name') or b'').decode()}:{k.decode()}", _f(m, k)))
    return out


def _walk(m, depth=0):
    yield depth, m
    for c in (_f(m, b"modules") or {}).values():
        yield from _walk(c, depth + 1)


def test_a_tree_read_by_torchfile_is_written_back_byte_for_byte(tmp_path):
    out = tmp_path / "rt.t7"
    n = W.save(W.load_tree(FIXTURE), str(out))
    data = out.read_bytes()
    assert n == len(data) == 6509369
    assert data == open(FIXTURE, "rb").read()


def test_primitives_tables_sharing_and_views(tmp_path):
    st = W.T7Storage(np.float32, 6, data=np.arange(6, dtype=np.float32))
    a = W.T7Tensor(np.float32)
    a.set_contiguous(st, 0, (2, 2))
    b = W.T7Tensor(np.float32)
    b.set_contiguous(st, 4, (2,))
    shared = {"x": 1.5}
    key = W.Table({1: 2})
    root = {"a": a, "b": b, "s": shared, "t": shared, 3: "three", "f": False, "n": None,
            key: "table key", "m": W.T7Object("nn.Linear", {"weight": a})}
    W.save(root, str(tmp_path / "p.t7"))
    r = _read(str(tmp_path / "p.t7"))
    assert r[b"a"].tolist() == [[0, 1], [2, 3]] and r[b"b"].tolist() == [4, 5]
    assert _storage_of(r[b"a"]) is _storage_of(r[b"b"])  # one storage, two views
    assert r[b"s"] is r[b"t"] and r[b"s"][b"x"] == 1.5  # a table written once, referenced twice
    assert r[3] == b"three" and r[b"f"] is False and r[b"n"] is None
    (k,) = [k for k in r if isinstance(k, dict)]
    assert k[1] == 2 and r[k] == b"table key"
    assert r[b"m"]._typename == b"nn.Linear" and r[b"m"][b"weight"] is r[b"a"]


def test_narrow_size_has_the_fixture_structure_and_storages(tmp_path):
    out = str(tmp_path / "narrow.t7")
    counts = W.write_original_checkpoint(out, W.NARROW, template=FIXTURE, seed=3)
    # the fixture's parameter counts (README of the reference: 226,272 + 471,532 + 4,296)
    assert counts["parameters"] == 226272 + 471532 + 4296
    assert counts["flat_storages"] == 4  # conv_net2 and the rest, weights and gradients
    assert counts["flat_elements"] == 2 * (226272 + 471532)
    ref, got = _read(FIXTURE), _read(out)
    assert _module_tree(got[b"model"][b"net"]) == _module_tree(ref[b"model"][b"net"])
    assert sorted(got.keys()) == sorted(ref.keys())
    # (identities compared as ids: a failing assertion must not print the whole tree)
    assert id(got[b"opt"]) == id(got[b"model"][b"opt"])  # one opt table, as the original saves it
    assert id(got[b"opt"][b"idx_to_token"]) == id(got[b"model"][b"nets"][b"language_model"][b"idx_to_token"])
    # same storage sharing pattern and offsets as the fixture's getParameters() layout
    pr, pg = _parameters(ref), _parameters(got)
    assert [p for p, _ in pr] == [p for p, _ in pg]
    sr = {}
    for (path, a), (_, b) in zip(pr, pg):
        assert a.shape == b.shape, path
        bs = _storage_of(b)
        assert sr.setdefault(id(_storage_of(a)), id(bs)) == id(bs), path
        off = lambda x: (x.__array_interface__["data"][0] - _storage_of(x).__array_interface__["data"][0]) // 4
        assert off(a) == off(b), path
    conv_net2 = [m for _, m in _walk(got[b"model"][b"nets"][b"conv_net2"]) if _f(m, b"weight") is not None]
    assert len({id(_storage_of(m[b"weight"])) for m in conv_net2}) == 1
    assert _storage_of(conv_net2[0][b"weight"]).size == 226272
    # random weights, zero gradients, deterministic for a seed
    w = got[b"model"][b"nets"][b"recog_base"][b"modules"][2][b"weight"]
    assert w.shape == (128, 3136) and abs(float(w.std()) - np.sqrt(2 / 3136)) < 0.1 * np.sqrt(2 / 3136)
    assert not np.array_equal(w, ref[b"model"][b"nets"][b"recog_base"][b"modules"][2][b"weight"])
    assert float(np.abs(got[b"model"][b"nets"][b"recog_base"][b"modules"][2][b"gradWeight"]).max()) == 0.0
    W.write_original_checkpoint(str(tmp_path / "again.t7"), W.NARROW, template=FIXTURE, seed=3)
    assert (tmp_path / "again.t7").read_bytes() == open(out, "rb").read()


def test_other_widths_resize_every_parameter_and_the_vocabulary(tmp_path):
    s = W.OriginalSizes((8, 12, 16, 24, 20), fc_dim=40, rpn_num_filters=10, rnn_size=18, encoding_size=14,
                        vocab_size=50, seq_length=12)
    out = str(tmp_path / "wide.t7")
    counts = W.write_original_checkpoint(out, s, template=FIXTURE)
    got = _read(out)
    nets = got[b"model"][b"nets"]
    byname = {_f(m, b"name"): m for _, m in _walk(got[b"model"][b"net"]) if _f(m, b"name")}
    assert byname[b"conv1_1"][b"weight"].shape == (8, 3, 3, 3)
    assert byname[b"conv2_1"][b"weight"].shape == (12, 8, 3, 3)
    assert byname[b"conv5_3"][b"weight"].shape == (20, 20, 3, 3) and byname[b"conv5_3"][b"nInputPlane"] == 20
    assert byname[b"conv4_1"][b"gradWeight"].shape == (24, 16, 3, 3)
    assert byname[b"fc6"][b"weight"].shape == (40, 20 * 7 * 7) and byname[b"fc7"][b"bias"].shape == (40,)
    rpn = nets[b"localization_layer"][b"nets"][b"rpn"][b"modules"]
    assert rpn[1][b"weight"].shape == (10, 20, 3, 3)
    assert rpn[3][b"modules"][1][b"modules"][1][b"weight"].shape == (48, 10, 1, 1)  # 4 x 12 anchors
    assert rpn[3][b"modules"][2][b"modules"][1][b"weight"].shape == (24, 10, 1, 1)  # 2 x 12 anchors
    assert nets[b"objectness_branch"][b"weight"].shape == (1, 40)
    assert nets[b"box_reg_branch"][b"weight"].shape == (4, 40)
    lm = nets[b"language_model"]
    assert lm[b"image_encoder"][b"modules"][1][b"weight"].shape == (14, 40)
    assert lm[b"lookup_table"][b"weight"].shape == (52, 14)  # V + 2 rows
    lstm = lm[b"rnn"][b"modules"][1]
    assert lstm[b"weight"].shape == (14 + 18, 4 * 18) and lstm[b"bias"].shape == (72,)
    assert lm[b"rnn"][b"modules"][3][b"weight"].shape == (51, 18)  # V + 1 outputs
    assert (lm[b"vocab_size"], lm[b"END_TOKEN"], lm[b"NULL_TOKEN"], lm[b"seq_length"]) == (50, 51, 52, 12)
    itt = got[b"opt"][b"idx_to_token"]
    assert sorted(itt) == list(range(1, 51)) and itt[50] == b"<UNK>"
    assert got[b"opt"][b"input_dim"] == 20 and got[b"opt"][b"rpn_num_filters"] == 10
    n_rest = (10 * 20 * 9 + 10) + (48 * 10 + 48) + (24 * 10 + 24) + (40 * 980 + 40) + (40 * 40 + 40) + (40 + 1) \
        + (4 * 40 + 4) + (14 * 40 + 14) + 52 * 14 + (32 * 72 + 72) + (51 * 18 + 51)
    w = nets[b"objectness_branch"][b"weight"]
    assert _storage_of(w).size == n_rest
    n_conv1 = (8 * 27 + 8) + (8 * 72 + 8) + (12 * 72 + 12) + (12 * 108 + 12)
    n_conv2 = sum(c * i * 9 + c for c, i in [(16, 12), (16, 16), (16, 16), (24, 16), (24, 24), (24, 24),
                                              (20, 24), (20, 20), (20, 20)])
    assert counts["parameters"] == n_conv1 + n_conv2 + n_rest


def test_a_tree_that_is_not_the_original_fails_naming_the_part():
    tree = W.load_tree(FIXTURE)
    lm = W.get(W.get(W.get(tree, "model"), "nets"), "language_model")
    rnn = W.get(lm, "rnn")
    W.get(rnn, "modules")[1].typename = "nn.GRU"
    with pytest.raises(ValueError, match=r"language_model.rnn\[1\]: expected nn.LSTM, found nn.GRU"):
        W.resize_checkpoint(tree, W.NARROW)


def test_a_written_checkpoint_converts(tmp_path):
    """What the benchmark converts at full size, at the narrow size: the converter reads the tree
    the writer produces and maps every weight (values compared with the file's)."""
    from densecap.modeling.original import convert_torch7_checkpoint

    out = str(tmp_path / "narrow.t7")
    W.write_original_checkpoint(out, W.NARROW, template=FIXTURE, seed=5)
    pth = str(tmp_path / "narrow.pth")
    ckpt = convert_torch7_checkpoint(out, pth)
    assert (tmp_path / "narrow.pth").stat().st_size > 4 * 702100  # the weights (no gradients)
    sd = ckpt["model"]
    n = sum(int(v.numel()) for v in sd.values() if v.is_floating_point())
    assert n >= 702100  # every parameter of the file (the converter may add rows and biases)
    got = _read(out)
    nets = got[b"model"][b"nets"]
    fc6 = nets[b"recog_base"][b"modules"][2][b"weight"]
    (match,) = [k for k, v in sd.items() if tuple(v.shape) == fc6.shape]
    assert np.array_equal(sd[match].numpy(), fc6)
    conv = _f(nets[b"conv_net2"][b"modules"][19], b"weight")  # conv5_3
    assert any(tuple(v.shape) == conv.shape and np.array_equal(v.numpy(), conv) for v in sd.values())
    assert ckpt["source"]["original"]["vocab_size"] == 30 and ckpt["source"]["original"]["seq_length"] == 10
    assert ckpt["source"]["original"]["conv_widths"] in ([8, 16, 32, 64, 64], (8, 16, 32, 64, 64))

