"""Convert the original DenseCap's Torch7 checkpoint (``densecap-pretrained-vgg16.t7``) into a
project checkpoint for the original-compatible model (``configs/densecap_vgg16_original.yaml``).

    python tools/convert_checkpoint.py --input densecap-pretrained-vgg16.t7 --output densecap_vgg16.pth

Weight mapping (original module -> project parameter):

=====================================================  =============================================
``nets.conv_net1`` + ``conv_net2`` (13 convs)          ``backbone.stages.*`` (vgg16_original)
``localization_layer.nets.rpn`` 3x3 conv               ``rpn.head.conv``
RPN 1x1 conv, 4k box deltas (anchor-major)             ``rpn.head.deltas``
RPN 1x1 conv, 2k scores (positive, negative)           ``rpn.head.objectness`` (2k channels)
``nn.MakeAnchors.anchors`` (2 x k: widths, heights)    ``MODEL.RPN.ANCHORS`` (w, h) pairs
``recog_base`` fc6 / fc7                               ``roi_heads.recognition.fc6`` / ``fc7``
``objectness_branch`` / ``box_reg_branch``             ``roi_heads.objectness`` / ``box_deltas``
LM ``image_encoder`` Linear                            ``caption_head.image_proj.0``
LM ``lookup_table`` (V+2 rows)                         ``caption_head.embed``
torch-rnn ``nn.LSTM`` weight (D+H) x 4H, bias 4H       ``caption_head.rnn`` weight_ih/hh, bias_ih
LM output Linear (V+1 outputs)                         ``caption_head.out``
=====================================================  =============================================

torch-rnn's gate blocks are (input, forget, output, cell candidate) and its weight is (D+H) x 4H
(rows 1..D multiply the input, the rest the previous hidden state); PyTorch's are (input, forget,
cell, output) and (4H, D) / (4H, H), so the blocks are reordered and transposed (``bias_hh`` 0).

Vocabulary: the original's words 1..V (``idx_to_token``), START = END = V+1, NULL = V+2. The
project's vocabulary is ``<PAD> <START> <END> <UNK>`` + the words in the original's order
(``<UNK>``, if the file has it, becomes index 3); embedding rows: PAD <- NULL, START and END <-
V+1, words <- their rows; output rows: END <- column V+1, words <- their columns, PAD/START
zero (the decoder never predicts them), UNK zero with bias -1e4 when the file has no ``<UNK>``.

What the file must hold (what the original's ``train.lua`` saves; anything else is ignored):
a table with ``model`` = a ``DenseCapModel`` whose ``nets`` has ``conv_net1`` and ``conv_net2``
(``modules`` lists holding the 13 ``nn.SpatialConvolution`` of VGG-16 between ReLUs and
``nn.SpatialMaxPooling``), ``localization_layer.nets.rpn`` (containers holding three
``nn.SpatialConvolution``: 3x3, box deltas 4k, scores 2k, in this order, and one
``nn.MakeAnchors`` with ``anchors`` 2 x k, ``x0 y0 sx sy``), ``recog_base`` (two ``nn.Linear``),
``objectness_branch`` and ``box_reg_branch`` (``nn.Linear``), ``language_model``
(``nn.LanguageModel`` with ``image_encoder`` (one ``nn.Linear``), ``lookup_table``
(``nn.LookupTable``), ``rnn`` (one ``nn.LSTM`` and the output ``nn.Linear``), ``vocab_size``,
``seq_length``, ``idx_to_token`` {1..V: word}). Modules need ``weight`` (and ``bias``) tensors.

Memory: storages are memory-mapped (``torch7._mapped_storages``); each weight is read once from
the file into its own array, the saved gradients are never read, and the torchfile tree is
dropped before the checkpoint is written.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from densecap.data.tokenizer import END, PAD, SPECIAL_TOKENS, START, UNK, UNK_TOKEN, Vocabulary

from . import torch7 as t7
from .torch7 import Torch7FormatError

logger = logging.getLogger(__name__)

__all__ = ["CONVERTER_VERSION", "ORIGINAL_CONFIG", "convert_torch7_checkpoint", "original_config", "main",
           "cached_conversion", "is_torch7_path"]

CONVERTER_VERSION = "1"

# configs/densecap_vgg16_original.yaml as KEY VALUE pairs (a test keeps the two equal); the
# converter sets the sizes read from the file on top.
ORIGINAL_CONFIG = [
    "MODEL.META_ARCHITECTURE", "DenseCapOriginal",
    "MODEL.PIXEL_MEAN", [103.939, 116.779, 123.68],
    "MODEL.PIXEL_STD", [1.0, 1.0, 1.0],
    "MODEL.BACKBONE.NAME", "vgg16_original",
    "MODEL.BACKBONE.WEIGHTS", "",
    "MODEL.BACKBONE.FREEZE_AT", 5,
    "MODEL.ORIGINAL.CONV_WIDTHS", [64, 128, 256, 512, 512],
    "MODEL.ORIGINAL.FIELD_CENTERS", [8.5, 8.5, 16.0, 16.0],
    "MODEL.RPN.HEAD_CHANNELS", 256,
    "MODEL.RPN.NMS_THRESH", 0.7,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 1000,
    "MODEL.ROI.SAMPLER", "bilinear",
    "MODEL.ROI.POOLER_RESOLUTION", 7,
    "MODEL.ROI.FC_DIM", 4096,
    "MODEL.ROI.DROPOUT", 0.5,
    "MODEL.ROI.NMS_THRESH_TEST", 0.3,
    "MODEL.CAPTION.DECODER", "lstm",
    "MODEL.CAPTION.EMBED_SIZE", 512,
    "MODEL.CAPTION.HIDDEN_SIZE", 512,
    "MODEL.CAPTION.NUM_LAYERS", 1,
    "MODEL.CAPTION.DROPOUT", 0.0,
    "MODEL.CAPTION.MAX_TOKENS", 15,
    "MODEL.CAPTION.CODE_EVERY_STEP", False,
    "INPUT.MAX_SIZE", 720,
    "SOLVER.OPTIMIZER", "ADAM",
    "SOLVER.BASE_LR", 1.0e-5,
    "TEST.BEAM_SIZE", 1,
    "TEST.SCORE_THRESH", 0.0,
    "TEST.DETECTIONS_PER_IMAGE", 0,
]


def original_config(overrides: Sequence[Any] = ()):
    """The config of ``configs/densecap_vgg16_original.yaml`` (on the project defaults and
    ``Base-DenseCap.yaml``'s values), plus ``overrides``."""
    from densecap.config import get_cfg

    cfg = get_cfg()
    base = ["MODEL.META_ARCHITECTURE", "DenseCap", "INPUT.MAX_SIZE", 720, "SOLVER.IMS_PER_BATCH", 1,
            "SOLVER.CHECKPOINT_PERIOD", 5000, "TEST.EVAL_PERIOD", 10000, "TEST.MAX_IMAGES", 1000,
            "DATASETS.TRAIN", ("vg_train",), "DATASETS.TEST", ("vg_val",), "DATASETS.ROOT", "datasets"]
    cfg.merge_from_list(base + list(ORIGINAL_CONFIG) + list(overrides))
    return cfg


# ---- reading the file ------------------------------------------------------------------------
class _Missing(KeyError):
    pass


def _need(obj: Any, key: str, where: str) -> Any:
    try:
        v = t7.get(obj, key)
    except (KeyError, TypeError):
        raise _Missing(f"{where}.{key}") from None
    if v is None:
        raise _Missing(f"{where}.{key}")
    return v


def _need_type(obj: Any, tname: str, where: str) -> Any:
    got = t7.typename(obj)
    if got != tname:
        raise _Missing(f"{where} (expected {tname}, found {got or type(obj).__name__})")
    return obj


def _weights(mod: Any, where: str, tname: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    _need_type(mod, tname, where)
    w = t7.tensor(_need(mod, "weight", where), f"{where}.weight")
    b = t7.get(mod, "bias", None)
    return w, (t7.tensor(b, f"{where}.bias") if isinstance(b, np.ndarray) and b.size else None)


# module classes that hold the same weights (a checkpoint saved with the cudnn backend, or with
# the older SpatialConvolutionMM whose weight may be stored as (out, in * kH * kW))
CONV_TYPES = ("nn.SpatialConvolution", "cudnn.SpatialConvolution", "nn.SpatialConvolutionMM")
POOL_TYPES = ("nn.SpatialMaxPooling", "cudnn.SpatialMaxPooling")


def _conv_weights(mod: Any, where: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    t = t7.typename(mod)
    if t not in CONV_TYPES:
        raise _Missing(f"{where} (expected a spatial convolution, found {t or type(mod).__name__})")
    w, b = _weights(mod, where, t)
    if w.ndim == 2:  # SpatialConvolutionMM: (out, in * kH * kW)
        try:
            shape = tuple(int(t7.get(mod, k)) for k in ("nOutputPlane", "nInputPlane", "kH", "kW"))
        except KeyError:
            raise _Missing(f"{where}.nInputPlane/kH/kW (2-D convolution weight)") from None
        w = w.reshape(shape)
    return w, b


def _find(seq: List[Any], tname: str) -> List[Tuple[int, Any]]:
    return [(i, m) for i, m in enumerate(seq) if t7.typename(m) == tname]


def _walk_all(mod: Any) -> List[Any]:
    """All modules inside containers, depth first, in order."""
    out = [mod]
    mods = t7.get(mod, "modules", None) if t7.typename(mod) else None
    if mods is not None:
        for m in t7.lua_list(mods):
            out += _walk_all(m)
    return out


def _walk(mod: Any, tname: str) -> List[Any]:
    """All modules of class ``tname`` inside containers, depth first."""
    out = []
    if t7.typename(mod) == tname:
        out.append(mod)
    mods = t7.get(mod, "modules", None) if t7.typename(mod) else None
    if mods is not None:
        for m in t7.lua_list(mods):
            out += _walk(m, tname)
    return out


def _read_original(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Weights (original names) and settings of a DenseCap Torch7 checkpoint."""
    root = t7.load_torch7(path)
    if not isinstance(root, dict):
        raise Torch7FormatError(path, f"a Torch7 file, but not a DenseCap checkpoint (top level is "
                                      f"{t7.typename(root) or type(root).__name__}, expected a table with 'model')")
    try:
        model = _need(root, "model", "checkpoint")
        if t7.typename(model) != "DenseCapModel":
            raise _Missing(f"checkpoint.model (expected DenseCapModel, found {t7.typename(model) or type(model).__name__})")
        nets = _need(model, "nets", "model")
        W: Dict[str, np.ndarray] = {}
        # CNN
        convs = []
        for name in ("conv_net1", "conv_net2"):
            seq = _need(nets, name, "model.nets")
            convs += [(name, m) for m in t7.modules(seq) if t7.typename(m) in CONV_TYPES]
        if len(convs) != 13:
            raise _Missing(f"model.nets.conv_net1/conv_net2 (expected the 13 VGG-16 convolutions, found {len(convs)})")
        widths = []
        for i, (name, m) in enumerate(convs):
            w, b = _conv_weights(m, f"model.nets.{name}[conv {i + 1}]")
            W[f"conv{i}.weight"], W[f"conv{i}.bias"] = w, b
            widths.append(int(w.shape[0]))
        block_ends = [1, 3, 6, 9, 12]
        conv_widths = [widths[i] for i in block_ends]
        pools = [m for name in ("conv_net1", "conv_net2") for m in t7.modules(_need(nets, name, "model.nets"))
                 if t7.typename(m) in POOL_TYPES]
        if len(pools) != 4 or not all(bool(t7.get(p, "ceil_mode", False)) for p in pools):
            logger.warning("%s: expected 4 ceil-mode max poolings in the CNN (loadcaffe's VGG-16)", path)
        # RPN
        loc = _need(nets, "localization_layer", "model.nets")
        rpn = _need(_need(loc, "nets", "model.nets.localization_layer"), "rpn", "model.nets.localization_layer.nets")
        rpn_convs = [m for m in _walk_all(rpn) if t7.typename(m) in CONV_TYPES]
        if len(rpn_convs) != 3:
            raise _Missing(f"model.nets.localization_layer.nets.rpn (expected 3 convolutions, found {len(rpn_convs)})")
        W["rpn.conv.weight"], W["rpn.conv.bias"] = _conv_weights(rpn_convs[0], "rpn conv 3x3")
        W["rpn.box.weight"], W["rpn.box.bias"] = _conv_weights(rpn_convs[1], "rpn box conv")
        W["rpn.score.weight"], W["rpn.score.bias"] = _conv_weights(rpn_convs[2], "rpn score conv")
        mk = _walk(rpn, "nn.MakeAnchors")
        if len(mk) != 1:
            raise _Missing("model.nets.localization_layer.nets.rpn: nn.MakeAnchors")
        anchors = t7.tensor(_need(mk[0], "anchors", "nn.MakeAnchors"), "anchors")  # 2 k
        k = anchors.shape[1]
        field = [float(_need(mk[0], a, "nn.MakeAnchors")) for a in ("x0", "y0", "sx", "sy")]
        if W["rpn.box.weight"].shape[0] != 4 * k or W["rpn.score.weight"].shape[0] != 2 * k:
            raise _Missing(f"rpn convolutions for {k} anchors (box {W['rpn.box.weight'].shape[0]}, "
                           f"score {W['rpn.score.weight'].shape[0]} outputs)")
        # recognition
        recog = _need(nets, "recog_base", "model.nets")
        lin = _find(t7.modules(recog), "nn.Linear")
        if len(lin) != 2:
            raise _Missing(f"model.nets.recog_base (expected fc6 and fc7, found {len(lin)} nn.Linear)")
        W["fc6.weight"], W["fc6.bias"] = _weights(lin[0][1], "model.nets.recog_base fc6", "nn.Linear")
        W["fc7.weight"], W["fc7.bias"] = _weights(lin[1][1], "model.nets.recog_base fc7", "nn.Linear")
        W["obj.weight"], W["obj.bias"] = _weights(_need(nets, "objectness_branch", "model.nets"),
                                                  "model.nets.objectness_branch", "nn.Linear")
        W["boxreg.weight"], W["boxreg.bias"] = _weights(_need(nets, "box_reg_branch", "model.nets"),
                                                        "model.nets.box_reg_branch", "nn.Linear")
        # language model
        lm = _need(nets, "language_model", "model.nets")
        _need_type(lm, "nn.LanguageModel", "model.nets.language_model")
        enc = _find(t7.modules(_need(lm, "image_encoder", "language_model")), "nn.Linear")
        if len(enc) != 1:
            raise _Missing("model.nets.language_model.image_encoder: nn.Linear")
        W["lm.enc.weight"], W["lm.enc.bias"] = _weights(enc[0][1], "language_model.image_encoder", "nn.Linear")
        W["lm.lookup.weight"], _ = _weights(_need(lm, "lookup_table", "language_model"),
                                            "language_model.lookup_table", "nn.LookupTable")
        rnn_mods = t7.modules(_need(lm, "rnn", "language_model"))
        lstms = _find(rnn_mods, "nn.LSTM")
        if len(lstms) != 1:
            raise _Missing(f"model.nets.language_model.rnn (expected one nn.LSTM, found {len(lstms)})")
        W["lm.lstm.weight"], W["lm.lstm.bias"] = _weights(lstms[0][1], "language_model.rnn nn.LSTM", "nn.LSTM")
        outs = _find(rnn_mods, "nn.Linear")
        if len(outs) != 1:
            raise _Missing("model.nets.language_model.rnn: output nn.Linear")
        W["lm.out.weight"], W["lm.out.bias"] = _weights(outs[0][1], "language_model.rnn output", "nn.Linear")
        vocab_size = int(_need(lm, "vocab_size", "language_model"))
        seq_length = int(_need(lm, "seq_length", "language_model"))
        idx = t7.fields(_need(lm, "idx_to_token", "language_model"))
        tokens = []
        for i in range(1, vocab_size + 1):
            for key in (i, float(i), str(i).encode()):  # number keys, or the JSON's string keys
                if key in idx:
                    tokens.append(t7.to_str(idx[key]))
                    break
            else:
                raise _Missing(f"language_model.idx_to_token[{i}]")
        opt = t7.get(root, "opt", None) or t7.get(model, "opt", None) or {}
        cnn_name = t7.to_str(t7.get(opt, "cnn_name", b"vgg-16")) if isinstance(opt, dict) else "vgg-16"
    except _Missing as e:
        raise Torch7FormatError(path, f"a Torch7 file, but not a DenseCap checkpoint of the original "
                                      f"architecture: missing or unexpected {e.args[0]}") from None
    finally:
        root = None  # drop the torchfile tree (and the gradients) as early as possible
    if cnn_name != "vgg-16":
        raise Torch7FormatError(path, f"cnn_name {cnn_name!r}: only the original's vgg-16 is supported")
    info = {
        "conv_widths": conv_widths, "anchors_wh": anchors.T.tolist(), "field_centers": field,
        "rpn_channels": int(W["rpn.conv.weight"].shape[0]), "fc_dim": int(W["fc6.weight"].shape[0]),
        "pooled": int(round((W["fc6.weight"].shape[1] / conv_widths[-1]) ** 0.5)),
        "embed": int(W["lm.enc.weight"].shape[0]), "hidden": int(W["lm.lstm.weight"].shape[1] // 4),
        "vocab_size": vocab_size, "seq_length": seq_length, "idx_to_token": tokens,
    }
    return W, info


# ---- mapping ----------------------------------------------------------------------------------
def _lstm_to_pytorch(w: np.ndarray, b: np.ndarray, d: int, h: int) -> Dict[str, torch.Tensor]:
    """torch-rnn (D+H, 4H) blocks (i, f, o, g) -> PyTorch (4H, D), (4H, H) blocks (i, f, g, o)."""
    if w.shape != (d + h, 4 * h) or b.shape != (4 * h,):
        raise ValueError(f"LSTM weight {w.shape} / bias {b.shape} do not match D={d}, H={h}")
    order = np.concatenate([np.arange(0, h), np.arange(h, 2 * h), np.arange(3 * h, 4 * h), np.arange(2 * h, 3 * h)])
    wx, wh = w[:d][:, order], w[d:][:, order]  # D 4H, H 4H
    return {
        "caption_head.rnn.weight_ih_l0": torch.from_numpy(np.ascontiguousarray(wx.T)),
        "caption_head.rnn.weight_hh_l0": torch.from_numpy(np.ascontiguousarray(wh.T)),
        "caption_head.rnn.bias_ih_l0": torch.from_numpy(np.ascontiguousarray(b[order])),
        "caption_head.rnn.bias_hh_l0": torch.zeros(4 * h),
    }


def _vocab_and_rows(tokens: List[str]) -> Tuple[Vocabulary, np.ndarray, np.ndarray]:
    """Project vocabulary, and for each project id the original lookup row / output column
    (0-based; -1 = none)."""
    bad = [t for t in tokens if t in SPECIAL_TOKENS and t != UNK_TOKEN]
    if bad:
        raise ValueError(f"the original vocabulary holds the project's special token(s) {bad}")
    vocab = Vocabulary([t for t in tokens if t != UNK_TOKEN])
    V = len(tokens)
    emb_row = np.full(len(vocab), -1, dtype=np.int64)
    out_col = np.full(len(vocab), -1, dtype=np.int64)
    emb_row[PAD] = V + 1  # NULL (V+2, 1-based)
    emb_row[START] = V  # START (V+1)
    emb_row[END] = V
    out_col[END] = V
    for i, t in enumerate(tokens):
        j = vocab.token_to_idx[t]
        emb_row[j] = i
        out_col[j] = i
    return vocab, emb_row, out_col


def _state_dict(W: Dict[str, np.ndarray], info: Dict[str, Any], vocab: Vocabulary, emb_row: np.ndarray,
                out_col: np.ndarray) -> Dict[str, torch.Tensor]:
    sd: Dict[str, torch.Tensor] = {}
    # backbone: stages.<b>.<2*j> for conv j of block b (Conv, ReLU pairs)
    depth = (2, 2, 3, 3, 3)
    ci = 0
    for b, n in enumerate(depth):
        for j in range(n):
            for p in ("weight", "bias"):
                sd[f"backbone.stages.{b}.{2 * j}.{p}"] = torch.from_numpy(W.pop(f"conv{ci}.{p}"))
            ci += 1
    tm = {"rpn.conv": "rpn.head.conv", "rpn.box": "rpn.head.deltas", "rpn.score": "rpn.head.objectness",
          "fc6": "roi_heads.recognition.fc6", "fc7": "roi_heads.recognition.fc7", "obj": "roi_heads.objectness",
          "boxreg": "roi_heads.box_deltas", "lm.enc": "caption_head.image_proj.0"}
    for src, dst in tm.items():
        for p in ("weight", "bias"):
            sd[f"{dst}.{p}"] = torch.from_numpy(W.pop(f"{src}.{p}"))
    V = info["vocab_size"]
    lookup = W.pop("lm.lookup.weight")  # V+2 E
    if lookup.shape[0] != V + 2:
        raise ValueError(f"lookup table has {lookup.shape[0]} rows, expected vocab_size + 2 = {V + 2}")
    emb = np.zeros((len(vocab), lookup.shape[1]), dtype=np.float32)
    emb[emb_row >= 0] = lookup[emb_row[emb_row >= 0]]
    sd["caption_head.embed.weight"] = torch.from_numpy(emb)
    ow, ob = W.pop("lm.out.weight"), W.pop("lm.out.bias")  # V+1 H, V+1
    if ow.shape[0] != V + 1:
        raise ValueError(f"language model output has {ow.shape[0]} rows, expected vocab_size + 1 = {V + 1}")
    w = np.zeros((len(vocab), ow.shape[1]), dtype=np.float32)
    bb = np.zeros((len(vocab),), dtype=np.float32)
    ok = out_col >= 0
    w[ok], bb[ok] = ow[out_col[ok]], ob[out_col[ok]]
    if out_col[UNK] < 0:
        bb[UNK] = -1e4  # the original cannot say <UNK>: neither may the converted model
    sd["caption_head.out.weight"] = torch.from_numpy(w)
    sd["caption_head.out.bias"] = torch.from_numpy(bb)
    sd.update(_lstm_to_pytorch(W.pop("lm.lstm.weight"), W.pop("lm.lstm.bias"), info["embed"], info["hidden"]))
    return sd


# ---- files ------------------------------------------------------------------------------------
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def is_torch7_path(path: str) -> bool:
    p = os.fspath(path).lower()
    return p.endswith(".t7") or p.endswith(".t7.zip") or (p.endswith(".zip") and _zip_member(path, quiet=True) is not None)


def _zip_member(path: str, quiet: bool = False) -> Optional[str]:
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.lower().endswith(".t7") and not n.endswith("/")]
    except (zipfile.BadZipFile, OSError) as e:
        if quiet:
            return None
        raise Torch7FormatError(path, f"not a readable zip file ({e})") from None
    if len(names) != 1:
        if quiet:
            return None
        raise Torch7FormatError(path, f"expected one .t7 file in the zip, found {len(names)}: {names[:5]}")
    return names[0]


def convert_torch7_checkpoint(t7_path: str, output_path: Optional[str] = None) -> Dict[str, Any]:
    """Read an original DenseCap Torch7 checkpoint (``.t7``, or a ``.zip`` holding one, like the
    original's download) and return a project checkpoint dict (``model``, ``cfg`` = the
    original-compatible config with the file's sizes, ``vocab``, ``iteration`` 0, ``source``:
    file name, size, sha256, converter version, the original's settings); with
    ``output_path`` also ``torch.save`` it there (atomically). Errors name the file."""
    t7_path = os.fspath(t7_path)
    if not os.path.isfile(t7_path):
        raise FileNotFoundError(f"{t7_path}: file not found")
    size = os.path.getsize(t7_path)
    digest = _sha256(t7_path)
    source: Dict[str, Any] = {"file_name": os.path.basename(t7_path), "size_bytes": int(size), "sha256": digest,
                              "converter": "densecap.modeling.original.convert", "converter_version": CONVERTER_VERSION,
                              "format": "torch7"}
    if zipfile.is_zipfile(t7_path):
        member = _zip_member(t7_path)
        tmpdir = tempfile.mkdtemp(prefix="densecap_t7_")
        try:
            with zipfile.ZipFile(t7_path) as z:
                extracted = z.extract(member, tmpdir)
            source["zip_member"] = member
            try:
                W, info = _read_original(extracted)
            except Torch7FormatError as e:
                raise Torch7FormatError(f"{t7_path}:{member}", e.reason) from None
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    else:
        W, info = _read_original(t7_path)
    vocab, emb_row, out_col = _vocab_and_rows(info["idx_to_token"])
    try:
        sd = _state_dict(W, info, vocab, emb_row, out_col)
    except ValueError as e:
        raise Torch7FormatError(t7_path, f"unexpected tensor shapes: {e}") from None
    del W
    cfg = original_config([
        "MODEL.ORIGINAL.CONV_WIDTHS", info["conv_widths"],
        "MODEL.ORIGINAL.FIELD_CENTERS", info["field_centers"],
        "MODEL.RPN.ANCHORS", info["anchors_wh"],
        "MODEL.RPN.HEAD_CHANNELS", info["rpn_channels"],
        "MODEL.ROI.FC_DIM", info["fc_dim"],
        "MODEL.ROI.POOLER_RESOLUTION", info["pooled"],
        "MODEL.CAPTION.EMBED_SIZE", info["embed"],
        "MODEL.CAPTION.HIDDEN_SIZE", info["hidden"],
        "MODEL.CAPTION.MAX_TOKENS", info["seq_length"],
    ])
    source["original"] = {k: info[k] for k in ("conv_widths", "anchors_wh", "field_centers", "vocab_size", "seq_length")}
    source["original"]["idx_to_token"] = list(info["idx_to_token"])
    ckpt = {"model": sd, "cfg": cfg.dump(), "vocab": vocab.to_dict(), "iteration": 0, "best_metric": None,
            "extra": {}, "source": source}
    if output_path:
        from densecap.utils.io import atomic_torch_save

        out_dir = os.path.dirname(os.path.abspath(output_path))
        os.makedirs(out_dir, exist_ok=True)
        atomic_torch_save(ckpt, output_path)
        logger.info("converted %s -> %s (%d parameters, vocabulary %d words)", t7_path, output_path,
                    sum(int(v.numel()) for v in sd.values()), info["vocab_size"])
    return ckpt


def _cache_dirs(t7_path: str) -> List[str]:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [os.path.dirname(os.path.abspath(t7_path)), os.path.join(base, "densecap")]


def cached_conversion(t7_path: str) -> str:
    """Path of the converted checkpoint of ``t7_path``, converting it once: the ``.pth`` is
    cached next to the file (``<name>.converted.pth``) when that folder is writable, else in
    ``$XDG_CACHE_HOME/densecap`` (``~/.cache/densecap``), keyed by the file's size and mtime and
    the converter version."""
    t7_path = os.fspath(t7_path)
    if not os.path.isfile(t7_path):
        raise FileNotFoundError(f"{t7_path}: file not found")
    st = os.stat(t7_path)
    stem = os.path.basename(t7_path)
    for suffix in (".zip", ".t7"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    tag = hashlib.sha1(f"{os.path.abspath(t7_path)}|{st.st_size}|{int(st.st_mtime)}|{CONVERTER_VERSION}".encode()).hexdigest()[:10]
    names = [f"{stem}.converted-{tag}.pth"]
    dirs = _cache_dirs(t7_path)
    for d in dirs:
        p = os.path.join(d, names[0])
        if os.path.isfile(p):
            logger.info("using the converted checkpoint %s (of %s)", p, t7_path)
            return p
    for d in dirs:
        try:
            os.makedirs(d, exist_ok=True)
            if not os.access(d, os.W_OK):
                continue
        except OSError:
            continue
        p = os.path.join(d, names[0])
        logger.warning("converting the Torch7 checkpoint %s once; cached as %s", t7_path, p)
        try:
            convert_torch7_checkpoint(t7_path, p)
        except PermissionError:
            continue
        return p
    raise RuntimeError(f"{t7_path}: no writable folder to cache the converted checkpoint ({', '.join(dirs)})")


# ---- command line -------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/convert_checkpoint.py --input X.t7 --output Y.pth``."""
    ap = argparse.ArgumentParser(
        prog="tools/convert_checkpoint.py",
        description="Convert the original DenseCap Torch7 checkpoint (densecap-pretrained-vgg16.t7, or the .zip "
                    "the original's download script fetches) into a densecap checkpoint for "
                    "configs/densecap_vgg16_original.yaml.",
    )
    ap.add_argument("--input", required=True, metavar="T7", help="the Torch7 checkpoint (.t7 or .t7.zip)")
    ap.add_argument("--output", required=True, metavar="PTH", help="the densecap checkpoint to write (.pth)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ckpt = convert_torch7_checkpoint(args.input, args.output)
    except (Torch7FormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    src = ckpt["source"]
    print(f"wrote {args.output}: vocabulary of {src['original']['vocab_size']} words, "
          f"sha256 of the input {src['sha256'][:16]}..., config MODEL.META_ARCHITECTURE DenseCapOriginal")
    return 0
