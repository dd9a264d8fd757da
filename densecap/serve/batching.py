"""Dynamic batching: requests that arrive together share one forward pass.

Callers (the HTTP handlers, on the event loop) :meth:`DynamicBatcher.submit` one image (and
optionally its boxes) and get a ``concurrent.futures.Future``. One worker thread takes the oldest
waiting job, then keeps taking jobs until it holds ``max_batch`` of them or ``max_wait_ms`` have
passed since that oldest job arrived, and runs them through ``predictor.predict`` at once (the
predictor puts images of the same resized shape in one forward pass, and never pads one image to
another's size, so a result does not depend on what it was batched with). The model therefore runs
off the event loop, one batch at a time, and the server answers ``/healthz`` while it works.

If a batch fails, its jobs are run again one by one, so a bad job only fails itself.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    image: np.ndarray  # H W 3 uint8
    given_boxes: Optional[np.ndarray]  # M 4 [x, y, w, h] original pixels, or None
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Groups concurrent :meth:`submit` calls into ``predictor.predict`` calls of up to
    ``max_batch`` images, waiting at most ``max_wait_ms`` for a batch to fill.

    ``on_batch(size, seconds)`` and ``on_queue(depth)`` report each batch (its number of images
    and the seconds the model took) and the queue depth, for the metrics.
    """

    def __init__(
        self,
        predictor,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        on_batch: Optional[Callable[[int, float], None]] = None,
        on_queue: Optional[Callable[[int], None]] = None,
    ) -> None:
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if float(max_wait_ms) < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.predictor = predictor
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        # one predict call is one forward pass per image shape: let it take the whole batch
        self.predictor.batch_size = max(int(getattr(predictor, "batch_size", 1)), self.max_batch)
        self._on_batch = on_batch or (lambda n, s: None)
        self._on_queue = on_queue or (lambda n: None)
        self._queue: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self._busy = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="densecap-batcher", daemon=True)
        self._thread.start()

    # ---- callers ---------------------------------------------------------------------------
    def submit(self, image: np.ndarray, given_boxes: Optional[np.ndarray] = None) -> Future:
        """Queue one image; the future's result is its :class:`~densecap.inference.predictor.Prediction`."""
        if self._stopped:
            raise RuntimeError("the batcher is stopped")
        job = _Job(image, given_boxes)
        self._queue.put(job)
        self._on_queue(self.queue_depth)
        return job.future

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for the model (not counting the batch being run)."""
        return self._queue.qsize()

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def close(self, timeout: float = 10.0) -> None:
        if not self._stopped:
            self._stopped = True
            self._queue.put(None)
            self._thread.join(timeout)

    # ---- the worker --------------------------------------------------------------------------
    def _collect(self, first: _Job) -> List[_Job]:
        batch = [first]
        deadline = first.arrived + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # close(): finish this batch, then stop
                self._queue.put(None)
                break
            batch.append(job)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch = self._collect(first)
            self._on_queue(self.queue_depth)
            self._busy.set()
            try:
                self._run(batch)
            finally:
                self._busy.clear()
        for job in self._drain():
            job.future.set_exception(RuntimeError("the server is shutting down"))

    def _drain(self) -> List[_Job]:
        left = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return left
            if job is not None:
                left.append(job)

    def _run(self, batch: List[_Job]) -> None:
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        t0 = time.perf_counter()
        try:
            preds = self.predictor.predict([j.image for j in live], [j.given_boxes for j in live])
        except Exception as e:  # noqa: BLE001 - isolate: each job alone, so one bad job fails only itself
            if len(live) == 1:
                live[0].future.set_exception(e)
                self._on_batch(1, time.perf_counter() - t0)
                return
            logger.warning("a batch of %d failed (%s: %s); running its images one by one", len(live), type(e).__name__, e)
            preds = []
            for j in live:
                try:
                    preds.append(self.predictor.predict([j.image], [j.given_boxes])[0])
                except Exception as e1:  # noqa: BLE001
                    preds.append(e1)
        self._on_batch(len(live), time.perf_counter() - t0)
        for j, p in zip(live, preds):
            if isinstance(p, BaseException):
                j.future.set_exception(p)
            else:
                j.future.set_result(p)
