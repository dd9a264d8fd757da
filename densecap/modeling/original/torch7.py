"""Reading the original DenseCap's Torch7 checkpoints (``torch.save`` files) with ``torchfile``.

Pitfalls handled here:

* ``torchfile.load`` must run with ``use_list_heuristic=False`` (with the default it compares
  numpy arrays inside tables and fails); table keys are then byte strings (``b"model"``) or
  numbers, and Lua arrays stay dicts keyed 1..n.
* Tensors are numpy views into their storage, and several tensors share one storage (the
  original's ``getParameters()`` flattens all weights of a network into one): read each tensor
  through its own offset/size/stride and copy what you keep (:func:`tensor`), never the storage.
* ``torchfile`` reads storages with ``numpy.fromfile``, so it needs a real file (a .zip is
  extracted first, see ``densecap.modeling.original.convert``), and a truncated storage is
  returned short without an error. Here storages are memory-mapped from the file instead
  (:func:`_mapped_storages`): their length is checked against the file, and only the tensors
  that are copied (the weights, not the saved gradients) are ever read.

Errors are :class:`Torch7FormatError` naming the file and the problem.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator, List, Optional

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Torch7FormatError", "load_torch7", "typename", "fields", "get", "modules", "tensor", "lua_list"]

TORCH7_MAGIC_TYPES = (0, 1, 2, 3, 4, 5, 6, 7, 8)  # nil number string table torch boolean function ...


class Torch7FormatError(ValueError):
    """A file is not a (complete) Torch7 DenseCap checkpoint; ``path`` and ``reason`` say why."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class _Truncated(Exception):
    pass


_STORAGE_DTYPES = {
    b"torch.ByteStorage": np.uint8, b"torch.CharStorage": np.int8, b"torch.ShortStorage": np.int16,
    b"torch.IntStorage": np.int32, b"torch.LongStorage": np.int64, b"torch.FloatStorage": np.float32,
    b"torch.DoubleStorage": np.float64, b"torch.CudaStorage": np.float32, b"torch.CudaByteStorage": np.uint8,
    b"torch.CudaCharStorage": np.int8, b"torch.CudaShortStorage": np.int16, b"torch.CudaIntStorage": np.int32,
    b"torch.CudaLongStorage": np.int64, b"torch.CudaDoubleStorage": np.float64,
}


# (address, bytes, file, offset) of the storages mapped by the last load: lets :func:`tensor` read a
# contiguous tensor straight from the file instead of paging in the mapping and copying it
_MAPPED: List[tuple] = []


@contextlib.contextmanager
def _mapped_storages() -> Iterator[None]:
    """Make torchfile map storages from the file (``numpy.memmap``) instead of reading them:
    nothing is loaded until a tensor is copied, so the saved gradients (half of a training
    checkpoint) never take memory; a storage that runs past the end of the file (a truncated
    file) raises."""
    import torchfile

    saved = {}
    _MAPPED.clear()

    def make(dtype, name):
        itemsize = np.dtype(dtype).itemsize

        def read(reader, version):
            size = reader.read_long()
            start = reader.f.tell()
            total = os.fstat(reader.f.fileno()).st_size
            if size < 0 or start + size * itemsize > total:
                raise _Truncated(f"{name.decode()} of {size} elements at byte {start} runs past the end of the file")
            reader.f.seek(start + size * itemsize)
            if size == 0:
                return np.zeros((0,), dtype=dtype)
            mm = np.memmap(reader.f.name, dtype=dtype, mode="r", offset=start, shape=(size,))
            _MAPPED.append((mm.__array_interface__["data"][0], size * itemsize, reader.f.name, start))
            return mm

        return read

    for name, dtype in _STORAGE_DTYPES.items():
        saved[name] = torchfile.type_handlers.get(name)
        torchfile.type_handlers[name] = make(dtype, name)
    try:
        yield
    finally:
        for name, h in saved.items():
            if h is None:
                torchfile.type_handlers.pop(name, None)
            else:
                torchfile.type_handlers[name] = h


def load_torch7(path: str) -> Any:
    """``torchfile.load(path, use_list_heuristic=False)`` with clear errors."""
    import torchfile

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    size = os.path.getsize(path)
    if size < 8:
        raise Torch7FormatError(path, f"not a Torch7 file ({size} bytes)")
    with open(path, "rb") as f:
        head = f.read(4)
    typeidx = int(np.frombuffer(head, dtype="<i4")[0])
    if typeidx not in TORCH7_MAGIC_TYPES:
        raise Torch7FormatError(path, f"not a Torch7 file (first object type {typeidx} is not a Torch7 type id)")
    try:
        with _mapped_storages():
            obj = torchfile.load(path, use_list_heuristic=False)
    except _Truncated as e:
        raise Torch7FormatError(path, f"truncated Torch7 file ({e}; {size} bytes)") from None
    except (EOFError, MemoryError) as e:
        raise Torch7FormatError(path, f"truncated Torch7 file ({type(e).__name__}; {size} bytes)") from None
    except Exception as e:  # noqa: BLE001 - torchfile raises struct.error, ValueError, T7ReaderException ...
        msg = str(e)
        if "unpack requires a buffer" in msg or "read() didn't return enough bytes" in msg or "not enough" in msg:
            raise Torch7FormatError(path, f"truncated Torch7 file ({msg}; {size} bytes)") from None
        raise Torch7FormatError(path, f"not a readable Torch7 file ({type(e).__name__}: {msg})") from None
    return obj


# ---- navigating the object tree -------------------------------------------------------------
def typename(obj: Any) -> Optional[str]:
    """Torch class name of a torchfile object (``"nn.Linear"``), or None for plain values."""
    f = getattr(type(obj), "torch_typename", None)
    if f is None:
        return None
    t = obj.torch_typename()
    return t.decode() if isinstance(t, bytes) else str(t)


def fields(obj: Any) -> dict:
    """The Lua table behind a torch object (or the table itself)."""
    if typename(obj) is not None:
        return obj._obj if obj._obj is not None else {}
    if isinstance(obj, dict):
        return obj
    raise TypeError(f"expected a Lua table or torch object, got {type(obj).__name__}")


def get(obj: Any, key: str, default: Any = KeyError) -> Any:
    """``obj.key`` for a torch object or table with byte-string keys."""
    try:
        d = fields(obj)
    except TypeError:
        d = {}
    k = key.encode() if isinstance(key, str) else key
    if k in d:
        return d[k]
    if default is KeyError:
        raise KeyError(key)
    return default


def lua_list(obj: Any) -> List[Any]:
    """A Lua array table {1: a, 2: b, ...} as a Python list (in key order)."""
    d = fields(obj)
    keys = sorted(k for k in d if isinstance(k, (int, float)))
    return [d[k] for k in keys]


def modules(obj: Any) -> List[Any]:
    """The ``modules`` list of a container (nn.Sequential, nn.ConcatTable ...)."""
    return lua_list(get(obj, "modules"))


def tensor(arr: Any, what: str) -> np.ndarray:
    """A float32 copy of one tensor view (never the whole shared storage)."""
    if not isinstance(arr, np.ndarray):
        raise KeyError(f"{what} is not a tensor")
    if arr.dtype == np.float32 and arr.size and arr.flags.c_contiguous:
        ptr = arr.__array_interface__["data"][0]
        for base, nbytes, fname, offset in _MAPPED:
            if base <= ptr and ptr + arr.nbytes <= base + nbytes:
                out = np.fromfile(fname, dtype=np.float32, count=arr.size, offset=offset + (ptr - base))
                if out.size == arr.size:
                    return out.reshape(arr.shape)
                break
    return np.array(arr, dtype=np.float32, copy=True, order="C")


def to_str(v: Any) -> str:
    return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
