"""Overlapping image decoding, the model and writing results in ``tools/infer.py``.

* :func:`prefetch` decodes the next images in ``workers`` threads while the model runs (image
  decoding in PIL and OpenCV releases the GIL), at most ``depth`` images ahead (bounded memory);
  items come out in input order, each with its image or the :class:`ImageReadError` it raised.
* :class:`OrderedSink` runs the writing (overlay drawing, JPEG encoding, features, records) in one
  background thread fed by a bounded queue, in submission order, so results.json and every file are
  what the sequential loop writes. An exception in a write is handed to ``on_error`` for that item;
  the run goes on.

``workers = 0`` turns both off (the sequential loop).
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple, Union

import numpy as np

from densecap.data.image_io import ImageReadError, read_image

__all__ = ["prefetch", "OrderedSink"]

_DONE = object()


def _load(item, read: Callable[[str], np.ndarray]) -> Union[np.ndarray, ImageReadError]:
    if item.image is not None:
        return item.image
    try:
        return read(item.path)
    except ImageReadError as e:
        return e


def prefetch(items: Iterable, workers: int = 2, depth: int = 8,
             read: Callable[[str], np.ndarray] = read_image) -> Iterator[Tuple[Any, Union[np.ndarray, ImageReadError]]]:
    """``(item, image or ImageReadError)`` in the order of ``items``, decoded ahead by ``workers``
    threads with ``read`` (the predictor's :meth:`read`, so a model's reading options apply)."""
    if workers <= 0:
        for it in items:
            yield it, _load(it, read)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        it_iter = iter(items)
        exhausted = False
        inflight = []
        try:
            while True:
                while not exhausted and len(inflight) < max(1, depth):
                    try:
                        it = next(it_iter)
                    except StopIteration:
                        exhausted = True
                        break
                    inflight.append((it, pool.submit(_load, it, read)))
                if not inflight:
                    return
                it, fut = inflight.pop(0)
                yield it, fut.result()
        finally:
            for _, fut in inflight:
                fut.cancel()


class OrderedSink:
    """``submit(fn, *args)`` runs ``fn(*args)`` in a background thread in submission order
    (``enabled=False``: right away, in the caller's thread). ``close()`` waits for everything."""

    def __init__(self, *, enabled: bool = True, depth: int = 8, on_error: Optional[Callable[[Any, BaseException], None]] = None) -> None:
        self.enabled = bool(enabled)
        self.on_error = on_error
        self._q: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
        self._thread: Optional[threading.Thread] = None
        self._fatal: Optional[BaseException] = None
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="write", daemon=True)
            self._thread.start()

    def _run(self, key, fn, args) -> None:
        try:
            fn(*args)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - reported for this item, the run goes on
            if self.on_error is None:
                raise
            self.on_error(key, e)

    def _loop(self) -> None:
        while True:
            job = self._q.get()
            if job is _DONE:
                return
            if self._fatal is not None:  # drain, so the producer never blocks on a full queue
                continue
            try:
                self._run(*job)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self._fatal = e

    def submit(self, key, fn: Callable, *args) -> None:
        if self._fatal is not None:
            raise self._fatal
        if not self.enabled:
            self._run(key, fn, args)
            return
        self._q.put((key, fn, args))

    def close(self) -> None:
        if self._thread is not None:
            self._q.put(_DONE)
            self._thread.join()
            self._thread = None
        if self._fatal is not None:
            raise self._fatal
