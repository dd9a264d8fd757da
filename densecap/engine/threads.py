"""``SOLVER.AUTO_THREADS``: the trainer picks torch's intra-op thread count from measured steps.

On a CPU the best thread count depends on what else the machine runs. On an idle 2-core machine
two threads train the demo model in 0.40 s per step against 0.57 s for one; while other jobs load
both cores, two threads wait at every parallel region for a descheduled thread (10 s per step
measured against 0.45 s for one). A fixed ``NUM_THREADS`` is right for one of the two cases only.

:class:`ThreadTuner` times real training steps (nothing is run twice): ``probe_steps`` steps at
each candidate count, the first after a switch not counted, then keeps the fastest (median). It
probes again every ``recheck_every`` steps, and at once when the recent steps' median is
``slow_factor`` times the chosen count's probe (then the other counts are tried first). A probe
stops early at a count whose step takes more than ``abort_factor`` times the best median measured
so far in the probe, so a machine that became busy costs a few slow steps, not ``probe_steps``.
"""
from __future__ import annotations

import collections
import logging
import os
import statistics
from typing import Dict, List, Optional, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["ThreadTuner", "available_cores"]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ThreadTuner:
    """Call :meth:`before_step` before each training step and :meth:`after_step` with its seconds."""

    def __init__(self, choices: Sequence[int], *, probe_steps: int = 6, recheck_every: int = 300,
                 slow_factor: float = 1.5, abort_factor: float = 2.0) -> None:
        self.choices = sorted({max(1, int(c)) for c in choices})
        if probe_steps < 2:
            raise ValueError("probe_steps must be >= 2 (the first step after a switch is not counted)")
        self.probe_steps = int(probe_steps)
        self.recheck_every = int(recheck_every)
        self.slow_factor = float(slow_factor)
        self.abort_factor = float(abort_factor)
        self.current: int = torch.get_num_threads()
        self.best_time: Optional[float] = None
        self.history: List[Dict] = []  # one record per finished probe: {"medians": {...}, "chosen": n}
        self._queue: List[int] = []
        self._times: Dict[int, List[float]] = {}
        self._since = 0
        self._recent: collections.deque = collections.deque(maxlen=self.probe_steps)
        self._threads = self.current
        if len(self.choices) > 1:
            self._start_probe()

    @classmethod
    def from_config(cls, cfg) -> Optional["ThreadTuner"]:
        """The tuner ``SOLVER.AUTO_THREADS`` asks for: 1 thread or one per available core; None
        when it is off, on a GPU, or with a single core."""
        if not cfg.SOLVER.AUTO_THREADS or str(cfg.MODEL.DEVICE).startswith("cuda"):
            return None
        cores = available_cores()
        return cls([1, cores]) if cores > 1 else None

    def _start_probe(self, current_first: bool = True) -> None:
        # periodic probes start with the current count (the run keeps its pace while the others are
        # tried); after a slowdown the current count is the suspect, so the others go first and
        # the current one is stopped after one counted step if it is still far slower
        others = [c for c in self.choices if c != self.current]
        order = [self.current] + others if current_first else others + [self.current]
        self._queue = [c for c in order for _ in range(self.probe_steps)]
        self._times = {c: [] for c in order}

    def before_step(self) -> None:
        n = self._queue[0] if self._queue else self.current
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        self._threads = n

    def after_step(self, seconds: float) -> None:
        n = self._threads
        if self._queue:
            self._queue.pop(0)
            times = self._times[n]
            times.append(float(seconds))
            done = {c: statistics.median(ts[1:]) for c, ts in self._times.items() if c != n and len(ts) > 1}
            if len(times) > 1 and done and times[-1] > self.abort_factor * min(done.values()):
                self._queue = [c for c in self._queue if c != n]  # far slower than another count: stop here
            if not self._queue:
                self._finish_probe()
            return
        self._since += 1
        self._recent.append(float(seconds))
        slow = (len(self._recent) == self._recent.maxlen and self.best_time is not None
                and statistics.median(self._recent) > self.slow_factor * self.best_time)
        if slow or (self.recheck_every > 0 and self._since >= self.recheck_every):
            self._start_probe(current_first=not slow)

    def _finish_probe(self) -> None:
        medians = {c: statistics.median(ts[1:]) for c, ts in self._times.items() if len(ts) > 1}
        if medians:
            self.current = min(medians, key=medians.get)
            self.best_time = medians[self.current]
        self.history.append({"medians": medians, "chosen": self.current})
        logger.info("threads: %d (seconds per step by thread count: %s)", self.current,
                    ", ".join(f"{c}: {t:.3f}" for c, t in sorted(medians.items())))
        self._since = 0
        self._recent.clear()
