"""SOLVER.AUTO_THREADS (densecap/engine/threads.py): the tuner keeps the thread count whose steps
are fastest, probes again when the machine's pace changes, and stops a probe that is far slower."""
import pytest
import torch

from densecap.config import get_cfg
from densecap.engine.threads import ThreadTuner


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _run(tuner, cost, steps):
    """``steps`` training steps whose seconds are ``cost(threads, step)``; the thread count of each."""
    used = []
    for i in range(steps):
        tuner.before_step()
        used.append(torch.get_num_threads())
        tuner.after_step(cost(torch.get_num_threads(), i))
    return used


def test_picks_the_faster_count_and_sets_torch_threads():
    torch.set_num_threads(1)
    tuner = ThreadTuner([1, 2], probe_steps=4, recheck_every=0)
    used = _run(tuner, lambda n, i: {1: 0.57, 2: 0.40}[n], 20)
    assert used[:8] == [1] * 4 + [2] * 4  # the current count first, then the other
    assert tuner.current == 2 and used[8:] == [2] * 12
    assert tuner.history[-1]["medians"] == {1: 0.57, 2: 0.40}


def test_first_step_after_a_switch_is_not_counted():
    torch.set_num_threads(1)
    tuner = ThreadTuner([1, 2], probe_steps=3, recheck_every=0)
    # each count's first step is slow (warm-up after the switch): only the others decide
    _run(tuner, lambda n, i: 5.0 if i in (0, 3) else {1: 0.5, 2: 0.6}[n], 6)
    assert tuner.current == 1 and tuner.history[-1]["medians"] == {1: 0.5, 2: 0.6}


def test_slowdown_triggers_a_new_probe_and_the_choice_follows_the_load():
    torch.set_num_threads(1)
    tuner = ThreadTuner([1, 2], probe_steps=4, recheck_every=0, slow_factor=1.5)

    def cost(n, i):  # from step 30 on another job takes a core: two threads become 25x slower
        if i < 30:
            return {1: 0.57, 2: 0.40}[n]
        return {1: 0.60, 2: 10.0}[n]

    used = _run(tuner, cost, 80)
    assert used[10] == 2
    assert len(tuner.history) == 2 and tuner.current == 1 and used[-1] == 1
    # after the change: two slow steps until the recent median crosses 1.5x, a probe that tries
    # 1 thread first, then two steps at 2 threads (the uncounted one after the switch and the one
    # that stops the probe), then 1 thread for good
    assert used[30:32] == [2, 2] and used[32:36] == [1] * 4 and used[36:38] == [2, 2]
    assert set(used[38:]) == {1}


def test_periodic_recheck():
    torch.set_num_threads(1)
    tuner = ThreadTuner([1, 2], probe_steps=2, recheck_every=10)
    _run(tuner, lambda n, i: {1: 0.5, 2: 0.4}[n], 4 + 10 + 4)
    assert len(tuner.history) == 2


def test_from_config():
    cfg = get_cfg()
    assert ThreadTuner.from_config(cfg) is None  # off by default
    cfg.SOLVER.AUTO_THREADS = True
    cfg.MODEL.DEVICE = "cuda"
    assert ThreadTuner.from_config(cfg) is None
    cfg.MODEL.DEVICE = "cpu"
    tuner = ThreadTuner.from_config(cfg)
    from densecap.engine.threads import available_cores

    if available_cores() > 1:
        assert tuner is not None and tuner.choices == [1, available_cores()]
    else:
        assert tuner is None
    with pytest.raises(ValueError, match="probe_steps"):
        ThreadTuner([1, 2], probe_steps=1)


def test_trainer_tunes_threads_and_logs_them(tiny_cfg):
    import json
    import os

    from densecap.engine.threads import available_cores
    from densecap.engine.trainer import Trainer

    tiny_cfg.SOLVER.AUTO_THREADS = True
    tiny_cfg.SOLVER.MAX_ITER = 16
    tiny_cfg.SOLVER.LOG_PERIOD = 2
    tiny_cfg.DATASETS.TEST = ()
    Trainer(tiny_cfg).train()
    lines = [json.loads(x) for x in open(os.path.join(tiny_cfg.OUTPUT_DIR, "metrics.jsonl"))]
    threads = [r["threads"] for r in lines if "total_loss" in r]
    if available_cores() > 1:  # the probe tried both counts (6 steps each), then kept one
        assert set(threads[:6]) == {1, available_cores()} and len(set(threads[6:])) == 1
    else:
        assert threads == []
