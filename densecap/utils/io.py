"""File helpers: atomic writes (nothing half-written is ever left behind)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs: Any) -> Iterator[io.IOBase]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` atomically."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: str, obj: Any, indent: Any = None) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)


def atomic_torch_save(obj: Any, path: str) -> None:
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
