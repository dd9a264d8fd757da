"""Training end to end on the tiny config: outputs, resume after SIGKILL, eval-only, DDP."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from densecap.engine.checkpoint import build_model_from_checkpoint, load_checkpoint
from densecap.engine.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")


def _opts(cfg):
    return ["DATASETS.TRAIN", repr(tuple(cfg.DATASETS.TRAIN)), "DATASETS.TEST", repr(tuple(cfg.DATASETS.TEST)),
            "OUTPUT_DIR", cfg.OUTPUT_DIR]


@pytest.mark.slow
def test_train_writes_everything(tiny_cfg, java):
    tiny_cfg.SOLVER.MAX_ITER = 4
    results = Trainer(tiny_cfg).train()
    out = tiny_cfg.OUTPUT_DIR
    for f in ("config.yaml", "metrics.jsonl", "model_last.pth", "model_final.pth", "model_best.pth"):
        assert os.path.isfile(os.path.join(out, f)), f
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    train_lines = [r for r in lines if "total_loss" in r]
    assert [r["iteration"] for r in train_lines] == [2, 4]
    for r in train_lines:
        assert {"loss_caption", "loss_rpn_cls", "lr", "time"} <= set(r)
        assert all(v == v for v in r.values())  # no NaN
    assert len(results["ap"]) == 35 and "caption_accuracy" in results  # 30 IoU x METEOR APs + 5 detection APs
    ckpt = load_checkpoint(os.path.join(out, "model_final.pth"))  # weights_only=True
    assert ckpt["iteration"] == 4 and ckpt["vocab"]["idx_to_token"][:4] == ["<PAD>", "<START>", "<END>", "<UNK>"]
    assert "small_cnn" in ckpt["cfg"]
    model, cfg = build_model_from_checkpoint(os.path.join(out, "model_final.pth"))
    assert cfg.MODEL.BACKBONE.WIDTH == 16 and not model.training
    # the final checkpoint holds the evaluated weights: evaluating it again gives the same numbers
    from densecap.engine.evaluation import evaluate_model

    again = evaluate_model(cfg, model, model.vocab)
    assert (again["map"], again["detmap"], again["ap"]) == (results["map"], results["detmap"], results["ap"])


@pytest.mark.slow
def test_resume_after_sigkill_loses_at_most_one_checkpoint_period(tiny_cfg):
    out = tiny_cfg.OUTPUT_DIR
    opts = _opts(tiny_cfg) + ["SOLVER.MAX_ITER", "400", "SOLVER.CHECKPOINT_PERIOD", "3", "DATASETS.TEST", "()"]
    cmd = [sys.executable, TRAIN_NET, "--config-file", os.path.join(ROOT, "configs/synthetic/densecap_tiny.yaml")]
    proc = subprocess.Popen(cmd + opts, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = os.path.join(out, "model_last.pth")
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if os.path.exists(last) and load_checkpoint(last)["iteration"] >= 6:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint at iteration >= 6 within 240 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = max(json.loads(line)["iteration"] for line in open(os.path.join(out, "metrics.jsonl")))
    saved = load_checkpoint(last)["iteration"]
    assert killed_at - saved <= 3 + 2  # at most one checkpoint period (+ the log period's granularity)
    n_before = len(open(os.path.join(out, "metrics.jsonl")).readlines())
    # resume for 3 more iterations: it continues from the checkpoint, not from 0
    resume = cmd + ["--resume"] + _opts(tiny_cfg) + [
        "SOLVER.MAX_ITER", str(saved + 3), "SOLVER.CHECKPOINT_PERIOD", "3", "DATASETS.TEST", "()"]
    r = subprocess.run(resume, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    final = load_checkpoint(os.path.join(out, "model_final.pth"))
    assert final["iteration"] == saved + 3
    lines = open(os.path.join(out, "metrics.jsonl")).readlines()[n_before:]
    its = [json.loads(line)["iteration"] for line in lines]
    assert its and min(its) > saved and its[-1] == saved + 3


@pytest.mark.slow
def test_eval_only_writes_eval_json(tiny_cfg, java):
    tiny_cfg.SOLVER.MAX_ITER = 2
    tiny_cfg.DATASETS.TEST = ()
    Trainer(tiny_cfg).train()
    out = tiny_cfg.OUTPUT_DIR
    test_set = tiny_cfg.DATASETS.TRAIN[0].replace(":train", ":test")
    r = subprocess.run(
        [sys.executable, TRAIN_NET, "--config-file", os.path.join(ROOT, "configs/synthetic/densecap_tiny.yaml"),
         "--eval-only", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), "OUTPUT_DIR", out,
         "DATASETS.TRAIN", repr(tuple(tiny_cfg.DATASETS.TRAIN)), "DATASETS.TEST", repr((test_set,))],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.load(open(os.path.join(out, "eval.json")))
    assert res["dataset"] == test_set and set(res) >= {"map", "detmap", "ap"}


def test_non_finite_loss_stops_training(tiny_cfg):
    trainer = Trainer(tiny_cfg)
    model = trainer.model

    def bad_forward(batch, _orig=model.forward):
        losses = _orig(batch)
        losses["loss_caption"] = losses["loss_caption"] * float("nan")
        return losses

    model.forward = bad_forward
    with pytest.raises(FloatingPointError, match="loss_caption"):
        trainer.train()


DDP_SCRIPT = r"""
import os, sys, torch
from densecap.config import load_config
from densecap.engine.launch import launch
from densecap.engine.trainer import Trainer
from densecap.engine.checkpoint import unwrap
from densecap.utils import comm

def work(cfg_file, opts, out):
    cfg = load_config(cfg_file, opts)
    t = Trainer(cfg)
    t.train()
    torch.save(unwrap(t.model).state_dict(), os.path.join(out, f"rank{comm.get_rank()}.pth"))

if __name__ == "__main__":
    cfg_file, out = sys.argv[1], sys.argv[2]
    launch(work, 2, (cfg_file, sys.argv[3:], out))
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes_hold_identical_weights(tiny_cfg, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tiny_cfg.OUTPUT_DIR
    os.makedirs(out, exist_ok=True)
    opts = _opts(tiny_cfg) + ["SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "4", "DATASETS.TEST", "()"]
    r = subprocess.run([sys.executable, str(script), os.path.join(ROOT, "configs/synthetic/densecap_tiny.yaml"), out,
                        *opts], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(os.path.join(out, "rank0.pth"), weights_only=True)
    b = torch.load(os.path.join(out, "rank1.pth"), weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ckpt = load_checkpoint(os.path.join(out, "model_final.pth"))
    assert ckpt["iteration"] == 3
