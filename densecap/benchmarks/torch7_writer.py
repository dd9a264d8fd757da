"""A small Torch7 binary serializer (what ``torch.save`` writes on a 64-bit little-endian machine)
and a writer of DenseCap checkpoints in the original's layout at any width, streaming.

Used by the ``convert`` benchmark to make, itself, a full-size random-weight checkpoint shaped
like the published ``densecap-pretrained-vgg16.t7`` (about 1.2 GB), and by its test at the
narrow size. Nothing here is needed to *read* a Torch7 file (the converter reads them).

The format (torch7 ``File.lua`` ``writeObject`` and ``generic/{Tensor,Storage}.c`` ``write``)::

    object   = int32 type, then by type:
      0 nil    -
      1 number float64
      2 string int32 length, bytes
      3 table  int32 index; if the index is new: int32 n, then n (key object, value object)
      4 torch  int32 index; if new: string "V <version>", string class name, then the body:
               Storage: int64 n, n raw elements;  Tensor: int32 ndim, int64 size[ndim],
               int64 stride[ndim], int64 storage offset (1-based), storage object (nil if none);
               any other class: its fields as one table object
      5 boolean int32 0/1
      8 function int32 index; if new: string (bytecode dump), upvalues table object

Indices count tables, torch objects and functions in the order they are first written
(from 1); an object met again is written as its type and index only, which is how shared
tables (``opt``), modules referenced twice and tensors viewing one flat storage (what
``model:getParameters()`` leaves) come out. Table pairs are written in Lua's ``pairs`` order;
here in insertion order, so a tree read by ``torchfile`` (which keeps the file's order) is written
back byte for byte.

Object model for writing: ``None``, ``bool``, ``int``/``float``, ``str``/``bytes``, ``dict`` (a
table; keys and values any of these; :class:`Table` where a table is a key), :class:`T7Object` (a torch class with a field table),
:class:`T7Storage`, :class:`T7Tensor`, ``torchfile.LuaFunction``. :func:`from_torchfile` turns what
``torchfile.load(..., use_list_heuristic=False)`` returns into that model, recovering which
storage (and offset) each tensor views.

Shapes: V: vocabulary size, E: LM encoding size, H: LSTM size, C: fc width (fc6/fc7), R: RPN
conv width, c1..c5: VGG block widths, k: anchors (12).
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, IO, Iterator, List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

TYPE_NIL, TYPE_NUMBER, TYPE_STRING, TYPE_TABLE, TYPE_TORCH, TYPE_BOOLEAN = 0, 1, 2, 3, 4, 5
TYPE_RECUR_FUNCTION = 8

# numpy dtype <-> Torch7 element type (storage class "torch.<T>Storage", tensor "torch.<T>Tensor")
_ELEM = {
    np.dtype(np.uint8): "Byte",
    np.dtype(np.int8): "Char",
    np.dtype(np.int16): "Short",
    np.dtype(np.int32): "Int",
    np.dtype(np.int64): "Long",
    np.dtype(np.float32): "Float",
    np.dtype(np.float64): "Double",
}

CHUNK = 1 << 22  # elements per block when a storage is generated while writing (16 MB of float32)


class Table(dict):
    """A Lua table: a ``dict`` hashed and compared by identity, so that tables can be keys of
    other tables (nngraph's node sets are)."""

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other


@dataclass(eq=False)
class T7Storage:
    """A ``torch.<T>Storage`` of ``size`` elements: ``data`` (1-D array) or, for storages too big to
    hold, ``fill(start, count) -> array`` called block by block while the file is written."""

    dtype: np.dtype
    size: int
    data: Optional[np.ndarray] = None
    fill: Optional[Callable[[int, int], np.ndarray]] = None

    @property
    def class_name(self) -> str:
        return f"torch.{_ELEM[np.dtype(self.dtype)]}Storage"

    def blocks(self) -> Iterator[np.ndarray]:
        dt = np.dtype(self.dtype)
        if self.data is not None:
            if self.data.size != self.size:
                raise ValueError(f"{self.class_name}: data has {self.data.size} elements, size says {self.size}")
            yield np.ascontiguousarray(self.data, dtype=dt)
            return
        for start in range(0, self.size, CHUNK):
            n = min(CHUNK, self.size - start)
            block = np.zeros(n, dt) if self.fill is None else np.asarray(self.fill(start, n), dtype=dt)
            if block.shape != (n,):
                raise ValueError(f"{self.class_name}: fill returned {block.shape} for {n} elements")
            yield block


@dataclass(eq=False)
class T7Tensor:
    """A ``torch.<T>Tensor``: ``size``/``stride`` in elements, ``offset`` 0-based into ``storage``
    (``None`` with ``size == ()``: an empty tensor without storage)."""

    dtype: np.dtype
    size: Tuple[int, ...] = ()
    stride: Tuple[int, ...] = ()
    offset: int = 0
    storage: Optional[T7Storage] = None

    @property
    def class_name(self) -> str:
        return f"torch.{_ELEM[np.dtype(self.dtype)]}Tensor"

    @property
    def numel(self) -> int:
        return int(np.prod(self.size)) if self.size else 0

    def set_contiguous(self, storage: T7Storage, offset: int, size: Sequence[int]) -> None:
        """View ``size`` (C order) of ``storage`` from ``offset`` (0-based)."""
        size = tuple(int(s) for s in size)
        stride, acc = [], 1
        for s in reversed(size):
            stride.append(acc)
            acc *= s
        self.size, self.stride = size, tuple(reversed(stride))
        self.offset, self.storage = int(offset), storage


@dataclass(eq=False)
class T7Object:
    """An instance of a Torch class other than tensors/storages (``nn.Linear``, ``DenseCapModel``):
    its class name, version and field table (a ``dict``)."""

    typename: str
    fields: Dict = field(default_factory=lambda: Table())
    version: int = 1

    def __getitem__(self, key):
        return self.fields[_key(self.fields, key)]

    def __setitem__(self, key, value):
        k = _key(self.fields, key) if _has(self.fields, key) else key
        self.fields[k] = value

    def get(self, key, default=None):
        return self.fields[_key(self.fields, key)] if _has(self.fields, key) else default


def _has(d: Dict, key) -> bool:
    return key in d or (isinstance(key, str) and key.encode() in d)


def _key(d: Dict, key):
    """Tables read by torchfile have ``bytes`` keys; accept ``str`` for them."""
    if key in d:
        return key
    if isinstance(key, str) and key.encode() in d:
        return key.encode()
    raise KeyError(key)


def get(obj, key):
    """``obj[key]`` for a table (``dict``) or a :class:`T7Object`, ``str`` keys matching ``bytes``."""
    if isinstance(obj, T7Object):
        return obj[key]
    return obj[_key(obj, key)]


# ---- the serializer --------------------------------------------------------------------------
class T7Writer:
    """Writes objects to a binary file object as ``torch.save`` does (one index space per file)."""

    def __init__(self, f: IO[bytes]):
        self.f = f
        self._index: Dict[int, int] = {}  # id(object) -> index
        self._keep: List[object] = []  # keeps indexed objects alive so ids stay unique
        self.bytes_written = 0

    # primitives
    def _raw(self, b) -> None:
        self.f.write(b)
        self.bytes_written += len(b) if isinstance(b, (bytes, bytearray)) else memoryview(b).nbytes

    def _int(self, v: int) -> None:
        self._raw(struct.pack("<i", int(v)))

    def _longs(self, vs: Sequence[int]) -> None:
        self._raw(struct.pack(f"<{len(vs)}q", *[int(v) for v in vs]))

    def _string(self, s) -> None:
        b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
        self._int(len(b))
        self._raw(b)

    def _new_index(self, obj) -> Optional[int]:
        """Writes the index; returns None if the object was written before (nothing more to write)."""
        idx = self._index.get(id(obj))
        if idx is not None:
            self._int(idx)
            return None
        idx = len(self._index) + 1
        self._index[id(obj)] = idx
        self._keep.append(obj)
        self._int(idx)
        return idx

    def write(self, obj) -> None:
        from torchfile import LuaFunction  # the function record type of the reader

        if obj is None:
            self._int(TYPE_NIL)
        elif isinstance(obj, (bool, np.bool_)):
            self._int(TYPE_BOOLEAN)
            self._int(1 if obj else 0)
        elif isinstance(obj, (int, float, np.integer, np.floating)):
            self._int(TYPE_NUMBER)
            self._raw(struct.pack("<d", float(obj)))
        elif isinstance(obj, (str, bytes)):
            self._int(TYPE_STRING)
            self._string(obj)
        elif isinstance(obj, dict):
            self._int(TYPE_TABLE)
            if self._new_index(obj) is not None:
                self._int(len(obj))
                for k, v in obj.items():
                    self.write(k)
                    self.write(v)
        elif isinstance(obj, (T7Object, T7Tensor, T7Storage)):
            self._int(TYPE_TORCH)
            if self._new_index(obj) is None:
                return
            if isinstance(obj, T7Object):
                self._string(f"V {obj.version}")
                self._string(obj.typename)
                self.write(obj.fields)
            elif isinstance(obj, T7Storage):
                self._string("V 1")
                self._string(obj.class_name)
                self._longs([obj.size])
                for block in obj.blocks():
                    self._raw(memoryview(block).cast("B"))
            else:
                self._string("V 1")
                self._string(obj.class_name)
                self._int(len(obj.size))
                self._longs(obj.size)
                self._longs(obj.stride)
                self._longs([obj.offset + 1])
                self.write(obj.storage)
        elif isinstance(obj, LuaFunction):
            self._int(TYPE_RECUR_FUNCTION)
            if self._new_index(obj) is not None:
                self._string(obj.dumped)
                self.write(obj.upvalues)
        else:
            raise TypeError(f"cannot write a {type(obj).__name__} to a Torch7 file")


def save(obj, path: str) -> int:
    """Writes ``obj`` to ``path`` (streaming: generated storages are produced block by block).
    Returns the number of bytes written."""
    with open(path, "wb", buffering=1 << 20) as f:
        w = T7Writer(f)
        w.write(obj)
    return w.bytes_written


# ---- from torchfile's objects ------------------------------------------------------------------
def from_torchfile(root):
    """The object model of this module from ``torchfile.load(path, use_list_heuristic=False)``:
    its dicts stay dicts (same keys, same order), ``TorchObject`` becomes :class:`T7Object`, and each
    numpy array becomes a :class:`T7Storage` (an array read as a storage: it owns its memory) or a
    :class:`T7Tensor` viewing the storage array it was cut from (torchfile builds tensors as strided
    views of the storage array it read, so the storage and the offset are recovered from the
    array's base and data pointer). Sharing is kept: an object met twice maps to one object."""
    from torchfile import LuaFunction, TorchObject

    memo: Dict[int, object] = {}
    keep: List[object] = []

    def storage_of(arr: np.ndarray) -> T7Storage:
        s = memo.get(id(arr))
        if s is None:
            s = T7Storage(arr.dtype, int(arr.size), data=arr)
            memo[id(arr)] = s
            keep.append(arr)
        return s

    def conv(o):
        if isinstance(o, (dict, TorchObject, np.ndarray, LuaFunction)):
            if id(o) in memo:
                return memo[id(o)]
        if isinstance(o, dict):
            out = Table()
            memo[id(o)] = out
            keep.append(o)
            for k, v in o.items():
                out[conv(k)] = conv(v)
            return out
        if isinstance(o, TorchObject):
            out = T7Object(o._typename.decode() if isinstance(o._typename, bytes) else o._typename,
                           version=int(o._version_number) or 1)
            memo[id(o)] = out
            keep.append(o)
            out.fields = conv(o._obj)
            return out
        if isinstance(o, LuaFunction):
            out = LuaFunction(o.size, o.dumped, conv(o.upvalues))
            memo[id(o)] = out
            keep.append(o)
            return out
        if isinstance(o, np.ndarray):
            base = o
            while base.base is not None:
                base = base.base
            if base is o:
                if o.size == 0:  # torchfile's stand-in for a tensor without storage
                    t = T7Tensor(o.dtype)
                    memo[id(o)] = t
                    keep.append(o)
                    return t
                return storage_of(o)
            if not isinstance(base, np.ndarray):
                raise TypeError("a tensor whose storage array cannot be found")
            st = storage_of(base)
            item = o.dtype.itemsize
            off = (o.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // item
            t = T7Tensor(o.dtype, tuple(int(s) for s in o.shape), tuple(int(s) // item for s in o.strides),
                         int(off), st)
            memo[id(o)] = t
            keep.append(o)
            return t
        return o

    return conv(root)


def load_tree(path: str):
    """Reads a Torch7 file with torchfile (``use_list_heuristic=False``, the option these files need)
    into this module's object model."""
    import torchfile

    return from_torchfile(torchfile.load(path, use_list_heuristic=False))


# ---- DenseCap checkpoints in the original's layout ------------------------------------------------
@dataclass(frozen=True)
class OriginalSizes:
    """Widths of the original DenseCap model. The defaults are the published model's
    (``DenseCapModel.lua`` for ``vgg-16``, ``train_opts.lua``, the VG vocabulary of ~10k words);
    :data:`NARROW` is the reference fixture's."""

    conv_widths: Tuple[int, int, int, int, int] = (64, 128, 256, 512, 512)
    fc_dim: int = 4096
    rpn_num_filters: int = 256
    rnn_size: int = 512
    encoding_size: int = 512
    vocab_size: int = 10000
    seq_length: int = 15


FULL = OriginalSizes()
NARROW = OriginalSizes((8, 16, 32, 64, 64), 128, 32, 64, 32, 30, 10)


def _modules(m) -> List:
    mods = m.get("modules") if isinstance(m, T7Object) else None
    return list(mods.values()) if mods else []


def _walk_modules(m) -> Iterator[T7Object]:
    yield m
    for c in _modules(m):
        yield from _walk_modules(c)


def _param_shapes(ckpt, s: OriginalSizes) -> List[Tuple[T7Object, Tuple[int, ...], Optional[Tuple[int, ...]], float]]:
    """(module, weight shape, bias shape, weight std) of every parameterised module of the model, in
    the original's layout; attributes holding widths are updated on the way. Fails naming the
    module when the tree is not the original's."""
    model = get(ckpt, "model")
    nets = get(model, "nets")
    c = s.conv_widths
    plan = []

    def conv(m, n_out, n_in, k):
        if m.typename != "nn.SpatialConvolution" or int(m["kH"]) != k:
            raise ValueError(f"expected a {k}x{k} nn.SpatialConvolution, found {m.typename}")
        m["nInputPlane"], m["nOutputPlane"] = n_in, n_out
        plan.append((m, (n_out, n_in, k, k), (n_out,), float(np.sqrt(2.0 / (n_in * k * k)))))

    def linear(m, n_out, n_in, where):
        if m.typename != "nn.Linear":
            raise ValueError(f"{where}: expected nn.Linear, found {m.typename}")
        plan.append((m, (n_out, n_in), (n_out,), float(np.sqrt(2.0 / n_in))))

    for part in ("conv_net1", "conv_net2"):
        for m in _modules(get(nets, part)):
            if m.typename != "nn.SpatialConvolution":
                continue
            name = m["name"].decode() if isinstance(m["name"], bytes) else m["name"]
            block, layer = int(name[4]), int(name[6])  # "conv<block>_<layer>"
            n_in = 3 if (block, layer) == (1, 1) else (c[block - 1] if layer > 1 else c[block - 2])
            conv(m, c[block - 1], n_in, 3)

    rpn = get(get(get(nets, "localization_layer"), "nets"), "rpn")
    rpn_convs = [m for m in _walk_modules(rpn) if m.typename == "nn.SpatialConvolution"]
    if len(rpn_convs) != 3:
        raise ValueError(f"the RPN has {len(rpn_convs)} convolutions, the original 3")
    conv(rpn_convs[0], s.rpn_num_filters, c[4], 3)
    for m in rpn_convs[1:]:  # box deltas (4k outputs) and scores (2k outputs) keep their outputs
        conv(m, int(m["nOutputPlane"]), s.rpn_num_filters, 1)

    opt = get(ckpt, "opt")
    pooled = c[4] * int(get(opt, "output_height")) * int(get(opt, "output_width"))
    fcs = {m["name"]: m for m in _modules(get(nets, "recog_base")) if m.typename == "nn.Linear"}
    linear(fcs[b"fc6"], s.fc_dim, pooled, "recog_base fc6")
    linear(fcs[b"fc7"], s.fc_dim, s.fc_dim, "recog_base fc7")
    linear(get(nets, "objectness_branch"), 1, s.fc_dim, "objectness_branch")
    linear(get(nets, "box_reg_branch"), 4, s.fc_dim, "box_reg_branch")

    lm = get(nets, "language_model")
    V, E, H = s.vocab_size, s.encoding_size, s.rnn_size
    linear(_modules(get(lm, "image_encoder"))[0], E, s.fc_dim, "language_model.image_encoder")
    lut = get(lm, "lookup_table")
    if lut.typename != "nn.LookupTable":
        raise ValueError(f"language_model.lookup_table: expected nn.LookupTable, found {lut.typename}")
    plan.append((lut, (V + 2, E), None, 1.0))
    rnn = _modules(get(lm, "rnn"))
    lstm = rnn[0]
    if lstm.typename != "nn.LSTM":
        raise ValueError(f"language_model.rnn[1]: expected nn.LSTM, found {lstm.typename}")
    lstm["input_dim"], lstm["hidden_dim"] = E, H
    plan.append((lstm, (E + H, 4 * H), (4 * H,), float(1.0 / np.sqrt(E + H))))
    linear(rnn[2], V + 1, H, "language_model.rnn[3]")

    for k, v in (("vocab_size", V), ("input_encoding_size", E), ("rnn_size", H), ("seq_length", s.seq_length),
                 ("image_vector_dim", s.fc_dim), ("START_TOKEN", V + 1), ("END_TOKEN", V + 1), ("NULL_TOKEN", V + 2)):
        lm[k] = v
    for k, v in (("input_dim", c[4]), ("rpn_num_filters", s.rpn_num_filters), ("rnn_size", H),
                 ("rnn_encoding_size", E), ("input_encoding_size", E), ("vocab_size", V),
                 ("seq_length", s.seq_length)):
        opt[_key(opt, k) if _has(opt, k) else k] = v
    # idx_to_token: one table shared by opt and the language model; refilled in place
    itt = get(opt, "idx_to_token")
    itt.clear()
    for i in range(1, V):
        itt[i] = f"word{i}".encode()
    itt[V] = b"<UNK>"
    return plan


def _all_tensors(root) -> Iterator[T7Tensor]:
    seen = set()
    stack = [root]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, T7Tensor):
            yield o
        elif isinstance(o, T7Object):
            stack.append(o.fields)
        elif isinstance(o, dict):
            for k, v in o.items():
                stack.append(k)
                stack.append(v)


def _normal_fill(segments: List[Tuple[int, int, float, float]], seed: int) -> Callable[[int, int], np.ndarray]:
    """fill(start, n): N(mean, std) per segment (start, end, std, mean), one generator per block
    (seeded by the block's start, so a block's values do not depend on the order of writing)."""

    def fill(start: int, n: int) -> np.ndarray:
        out = np.random.default_rng([seed, start]).standard_normal(n, dtype=np.float32)
        for a, b, std, mean in segments:
            lo, hi = max(a, start), min(b, start + n)
            if lo < hi:
                seg = out[lo - start : hi - start]
                seg *= np.float32(std)
                if mean:
                    seg += np.float32(mean)
        return out

    return fill


def resize_checkpoint(ckpt, sizes: OriginalSizes = FULL, seed: int = 0) -> Dict[str, int]:
    """Turns a checkpoint tree in the original's layout (e.g. the narrow reference fixture read by
    :func:`load_tree`) into one of ``sizes``, in place, with random weights (He-normal weights,
    biases N(0, 0.05)) and zero gradients, generated while writing.

    Every parameter keeps its place: tensors that shared one flat storage (``getParameters()``:
    all of ``conv_net2``; the RPN, recognition network and language model) share a new flat
    storage with the offsets recomputed in the same order, and so do their gradients; the rest
    (``conv_net1``) get storages of their own. Returns the element counts of the storages."""
    plan = _param_shapes(ckpt, sizes)
    # the parameter tensors and their gradients, with the shapes and init they get
    entries = []  # (tensor, new shape, std, mean)
    for m, w_shape, b_shape, std in plan:
        entries.append((m["weight"], w_shape, std, 0.0, False))
        entries.append((m["gradWeight"], w_shape, 0.0, 0.0, True))
        if b_shape is not None:
            entries.append((m["bias"], b_shape, 0.05, 0.0, False))
            entries.append((m["gradBias"], b_shape, 0.0, 0.0, True))
    groups: Dict[int, List] = {}
    for e in entries:
        t = e[0]
        if not isinstance(t, T7Tensor) or t.storage is None:
            raise ValueError("a parameter of the original model without storage")
        groups.setdefault(id(t.storage), []).append(e)
    planned = {id(e[0]) for e in entries}
    for t in _all_tensors(ckpt):  # nothing else may view a parameter storage
        if t.storage is not None and id(t.storage) in groups and id(t) not in planned:
            raise ValueError(f"a {t.class_name} outside the parameters views a parameter storage")
    counts = {"flat_storages": 0, "flat_elements": 0, "separate_elements": 0, "parameters": 0}
    for k, es in enumerate(groups.values()):
        es.sort(key=lambda e: e[0].offset)
        old = es[0][0].storage
        pos, segments = 0, []
        for t, shape, std, mean, _ in es:
            if t.offset != pos or not t.numel:
                raise ValueError(f"{old.class_name} of {old.size} elements is not a packed parameter storage")
            pos += t.numel
        if pos != old.size:
            raise ValueError(f"{old.class_name} of {old.size} elements holds {pos} parameter elements")
        new = T7Storage(np.float32, 0)
        pos = 0
        for t, shape, std, mean, is_grad in es:
            n = int(np.prod(shape))
            if std:
                segments.append((pos, pos + n, std, mean))
            t.set_contiguous(new, pos, shape)
            pos += n
        new.size = pos
        if segments:
            new.fill = _normal_fill(segments, seed * 1000 + k)
        if len(es) > 1:
            counts["flat_storages"] += 1
            counts["flat_elements"] += pos
        else:
            counts["separate_elements"] += pos
        if not es[0][4]:
            counts["parameters"] += pos
    return counts


def write_original_checkpoint(
    path: str, sizes: OriginalSizes = FULL, *, template: Optional[str] = None, seed: int = 0
) -> Dict[str, int]:
    """Writes a random-weight DenseCap checkpoint in the original's layout (the tree of the narrow
    reference checkpoint ``template`` written by the original Lua code, resized to ``sizes``) to
    ``path``, streaming: the big storages are generated block by block while writing. Returns the
    element counts (:func:`resize_checkpoint`) and ``bytes``."""
    tree = load_tree(template or reference_checkpoint())
    counts = resize_checkpoint(tree, sizes, seed)
    counts["bytes"] = save(tree, path)
    return counts


def reference_checkpoint() -> str:
    """The narrow checkpoint written by the original Lua code: the repository's copy of the test
    fixture, else the reference folder beside the repository."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for p in (
        os.path.join(root, "tests", "fixtures", "torch7", "narrow_seed1", "checkpoint.t7"),
        os.path.join(root, "..", "shared", "reference", "torch7", "narrow_seed1", "checkpoint.t7"),
    ):
        if os.path.isfile(p):
            return os.path.normpath(p)
    raise FileNotFoundError(
        "the narrow reference checkpoint (torch7/narrow_seed1/checkpoint.t7) is neither in "
        "tests/fixtures/ nor in ../shared/reference/; pass its path as the template")
