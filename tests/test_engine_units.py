"""Trainer building blocks that need no model: LR schedule, checkpoint RNG state, finite check."""
import math
import random

import numpy as np
import pytest
import torch

from densecap.config import get_cfg
from densecap.engine.build import LRScheduler, build_optimizer
from densecap.engine.checkpoint import get_rng_state, load_checkpoint, set_rng_state
from densecap.engine.trainer import NonFiniteLossError, check_finite
from densecap.utils.io import atomic_torch_save


def _sched(**solver):
    cfg = get_cfg()
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.SOLVER.BASE_LR)
    return LRScheduler(cfg, opt), opt


def test_warmup_then_cosine():
    s, opt = _sched(BASE_LR=1.0, MAX_ITER=100, WARMUP_ITERS=10, WARMUP_FACTOR=0.1, LR_SCHEDULER_NAME="cosine")
    s.step(0, 0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    s.step(5, 0.0)  # halfway through warmup: factor 0.55, cosine(0.05)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.55 * 0.5 * (1 + math.cos(math.pi * 0.05)))
    s.step(50, 0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    s.step(100, 0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_and_time_progress():
    s, opt = _sched(BASE_LR=1.0, MAX_ITER=100, LR_SCHEDULER_NAME="step", STEPS=(50, 80), GAMMA=0.1)
    s.step(49, 0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    s.step(50, 0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    s.step(80, 0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    # a time budget: progress is the larger of iterations and elapsed time
    s, opt = _sched(BASE_LR=1.0, MAX_ITER=1000, MAX_TIME_SECONDS=10.0, LR_SCHEDULER_NAME="cosine")
    s.step(10, 5.0)
    assert s.progress() == pytest.approx(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    state = s.state_dict()
    s2, opt2 = _sched(BASE_LR=1.0, MAX_ITER=1000, MAX_TIME_SECONDS=10.0, LR_SCHEDULER_NAME="cosine")
    s2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5)


def test_backbone_lr_factor_groups():
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.BACKBONE_LR_FACTOR = 0.5
    m = torch.nn.Module()
    m.backbone = torch.nn.Linear(2, 2)
    m.head = torch.nn.Linear(2, 2)
    opt = build_optimizer(cfg, m)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == [pytest.approx(0.05), pytest.approx(0.1)]
    cfg.SOLVER.OPTIMIZER = "NOPE"
    with pytest.raises(ValueError, match="NOPE"):
        build_optimizer(cfg, m)


def test_rng_state_roundtrip_through_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    state = get_rng_state()
    path = tmp_path / "rng.pth"
    atomic_torch_save({"rng": state}, str(path))
    expected = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(load_checkpoint(str(path))["rng"])  # weights_only=True load
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


def test_non_finite_loss_stops_with_the_loss_dict():
    check_finite({"loss_a": torch.tensor(1.0)}, 3)
    with pytest.raises(NonFiniteLossError, match=r"iteration 7.*loss_b.*loss_a"):
        check_finite({"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(float("nan"))}, 7)


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.pth"):
        load_checkpoint(str(bad))


def test_checkpoint_config_with_a_removed_key_still_loads(caplog):
    from densecap.config import get_cfg
    from densecap.engine.checkpoint import cfg_from_checkpoint

    cfg = get_cfg()
    text = cfg.dump().replace("MODEL:\n", "MODEL:\n  OLD_SECTION:\n    GONE: 1\n", 1)
    text = text.replace("SOLVER:\n", "SOLVER:\n  OLD_KEY: 3\n", 1)
    text = text.replace("BASE_LR: 1.0e-05", "BASE_LR: 0.25")
    loaded = cfg_from_checkpoint({"cfg": text})
    assert loaded.SOLVER.BASE_LR == 0.25  # the rest of the saved config is kept
    assert "OLD_KEY" not in loaded.SOLVER and "OLD_SECTION" not in loaded.MODEL
    assert "SOLVER.OLD_KEY" in caplog.text and "MODEL.OLD_SECTION" in caplog.text


@pytest.mark.parametrize("name", ["ADAM", "ADAMW", "SGD"])
def test_optimizers_use_the_fused_kernels_and_match_the_loop(name):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    ref = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    ref.load_state_dict(net.state_dict())
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = name
    opt = build_optimizer(cfg, net)
    assert opt.defaults["fused"] is True
    loop_cls = {"ADAM": torch.optim.Adam, "ADAMW": torch.optim.AdamW, "SGD": torch.optim.SGD}[name]
    kw = {"momentum": cfg.SOLVER.MOMENTUM} if name == "SGD" else {"betas": tuple(cfg.SOLVER.BETAS)}
    loop = loop_cls(ref.parameters(), lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, foreach=False, **kw)
    x = torch.randn(8, 6)
    for _ in range(3):
        for model, o in ((net, opt), (ref, loop)):
            o.zero_grad()
            model(x).square().sum().backward()
            o.step()
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
