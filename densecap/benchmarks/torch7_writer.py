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
