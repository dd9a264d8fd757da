"""The training loop: checkpoints, resume, periodic evaluation, metrics, DDP.

Writes to ``OUTPUT_DIR``::

    config.yaml          the merged config
    metrics.jsonl        one JSON line per log period (losses, lr, iteration time) and per evaluation
    model_last.pth       every SOLVER.CHECKPOINT_PERIOD iterations (atomic; what --resume reads)
    model_best.pth       the checkpoint with the best validation mAP so far (CIDEr for captioners)
    model_final.pth      at the end of training
    eval_<iter>.json     evaluation results
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, Optional

import torch
from tqdm import tqdm

from densecap.data.tokenizer import Vocabulary
from densecap.utils import comm

from .build import build_lr_scheduler, build_optimizer, build_train_loader, load_train_vocab
from .checkpoint import load_checkpoint, save_checkpoint, set_rng_state, unwrap
from .threads import ThreadTuner

logger = logging.getLogger(__name__)

LAST = "model_last.pth"
BEST = "model_best.pth"
FINAL = "model_final.pth"


class NonFiniteLossError(FloatingPointError):
    pass


def check_finite(loss_dict: Dict[str, torch.Tensor], iteration: int) -> None:
    bad = {k: float(v.detach()) for k, v in loss_dict.items() if not torch.isfinite(v).all()}
    if bad:
        shown = {k: float(v.detach()) for k, v in loss_dict.items()}
        raise NonFiniteLossError(f"non-finite loss at iteration {iteration}: {bad}; all losses: {shown}")


def _training_vocab(cfg, init: Optional[dict]) -> Vocabulary:
    """The training data's vocabulary (``load_train_vocab``), or, when training starts from a
    checkpoint (MODEL.WEIGHTS) with another vocabulary, the checkpoint's words (their ids kept)
    followed by the data's words it lacks: the model's word rows are extended for them
    (:func:`extend_vocab_rows`) and the datasets translate their word ids into it."""
    data = load_train_vocab(cfg)
    if init is None or not init.get("vocab"):
        return data
    ckpt = Vocabulary.from_dict(init["vocab"])
    if ckpt == data:
        return data
    new = [w for w in data.idx_to_token[4:] if w not in ckpt]
    if not new:
        logger.info("vocabulary of %s (%d tokens) kept: it covers the training data's %d", cfg.MODEL.WEIGHTS, len(ckpt), len(data))
        return ckpt
    logger.info("vocabulary of %s (%d tokens) extended by %d new words of the training data (e.g. %s)",
                cfg.MODEL.WEIGHTS, len(ckpt), len(new), ", ".join(new[:8]))
    return Vocabulary(ckpt.idx_to_token[4:] + new)


def extend_vocab_rows(model: torch.nn.Module, state: Dict[str, torch.Tensor], old_size: int, new_size: int) -> Dict[str, torch.Tensor]:
    """``state`` (a checkpoint's weights for a vocabulary of ``old_size`` tokens) fitted to
    ``model`` built for ``new_size`` tokens whose first ``old_size`` are the same: every tensor
    whose first dimension is the vocabulary (word embeddings, output layers) keeps its rows and
    takes the model's fresh initialisation for the new ones."""
    if new_size == old_size:
        return state
    own = model.state_dict()
    out = dict(state)
    for k, v in state.items():
        mine = own.get(k)
        if mine is None or mine.shape == v.shape or v.dim() == 0:
            continue
        if v.shape[0] == old_size and mine.shape[0] == new_size and mine.shape[1:] == v.shape[1:]:
            t = mine.detach().clone()
            t[:old_size] = v.to(t.dtype)
            out[k] = t
            logger.info("%s: %d word rows kept, %d new rows initialised", k, old_size, new_size - old_size)
    return out


class Trainer:
    def __init__(self, cfg, *, resume: bool = False, vocab: Optional[Vocabulary] = None) -> None:
        from densecap.modeling import build_model

        self.cfg = cfg
        self.out = cfg.OUTPUT_DIR
        last = os.path.join(self.out, LAST)
        init = None
        if not (resume and os.path.isfile(last)) and cfg.MODEL.WEIGHTS:
            init = load_checkpoint(cfg.MODEL.WEIGHTS)
        self.vocab = vocab if vocab is not None else _training_vocab(cfg, init)
        torch.manual_seed(cfg.SEED + comm.get_rank())
        self.device = torch.device(cfg.MODEL.DEVICE)
        model = build_model(cfg, self.vocab).to(self.device)
        self.start_iter = 0
        self.elapsed = 0.0
        self.best_metric: Optional[float] = None
        ckpt = None
        if resume and os.path.isfile(last):
            ckpt = load_checkpoint(last)
            model.load_state_dict(ckpt["model"])
            logger.info("resuming from %s at iteration %d", last, ckpt["iteration"])
        elif init is not None:
            state = init["model"]
            if init.get("vocab"):
                state = extend_vocab_rows(model, state, len(init["vocab"]["idx_to_token"]), len(self.vocab))
            missing, unexpected = model.load_state_dict(state, strict=False)
            logger.info("initialised from %s (missing %s, unexpected %s)", cfg.MODEL.WEIGHTS, missing, unexpected)
        self.model = model
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if "rng" in ckpt:
                set_rng_state(ckpt["rng"])
            self.start_iter = int(ckpt["iteration"])
            self.elapsed = float(ckpt.get("extra", {}).get("elapsed", 0.0))
            self.best_metric = ckpt.get("best_metric")
        if comm.get_world_size() > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.loader = build_train_loader(cfg, self.vocab)
        self.loader.epoch = self.start_iter  # a fresh shuffle after a resume
        # SOLVER.SCST.ENABLED: a self-critical stage replaces the model's losses (densecap/engine/scst.py)
        self.scst = None
        if cfg.SOLVER.SCST.ENABLED:
            from .scst import SelfCriticalStep

            self.scst = SelfCriticalStep(cfg, self.loader.dataset, self.vocab)

    # ------------------------------------------------------------------------------------------
    def _checkpoint(self, name: str, iteration: int) -> None:
        if comm.is_main_process():
            save_checkpoint(
                os.path.join(self.out, name),
                model=self.model,
                cfg=self.cfg,
                vocab=self.vocab,
                iteration=iteration,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                best_metric=self.best_metric,
                extra={"elapsed": self.elapsed},
            )

    def _log(self, record: dict) -> None:
        if comm.is_main_process():
            with open(os.path.join(self.out, "metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate(self, iteration: int) -> Optional[dict]:
        from .evaluation import evaluate_model

        results = evaluate_model(self.cfg, unwrap(self.model), self.vocab)
        self.model.train()
        if results is None:
            return None
        if comm.is_main_process():
            from densecap.utils.io import atomic_write_json

            atomic_write_json(os.path.join(self.out, f"eval_{iteration:07d}.json"), results, indent=2)
            self._log({"iteration": iteration, "eval": {k: v for k, v in results.items() if not isinstance(v, dict)}})
        metric = results.get("map", results.get("cider"))
        if metric is not None and (self.best_metric is None or metric > self.best_metric):
            self.best_metric = float(metric)
            self._checkpoint(BEST, iteration)
        return results

    def _time_is_up(self) -> bool:
        limit = self.cfg.SOLVER.MAX_TIME_SECONDS
        up = torch.tensor([1 if (limit > 0 and self.elapsed >= limit) else 0])
        if comm.get_world_size() > 1:
            torch.distributed.broadcast(up, 0)
        return bool(up.item())

    def train(self) -> Optional[dict]:
        cfg = self.cfg
        os.makedirs(self.out, exist_ok=True)
        if comm.is_main_process():
            from densecap.utils.io import atomic_write_text

            atomic_write_text(os.path.join(self.out, "config.yaml"), cfg.dump())
        max_iter = cfg.SOLVER.MAX_ITER
        it = self.start_iter
        self.model.train()
        data_iter = iter(self.loader)
        bar = tqdm(
            total=max_iter, initial=it, disable=not comm.is_main_process(), desc="train", dynamic_ncols=True, mininterval=2.0
        )
        window: Dict[str, float] = {}
        n_window = 0
        t_window = 0.0
        tuner = ThreadTuner.from_config(cfg) if comm.get_world_size() == 1 else None  # SOLVER.AUTO_THREADS
        while it < max_iter and not self._time_is_up():
            if tuner is not None:
                tuner.before_step()
            t0 = time.perf_counter()
            batch = next(data_iter)
            if not batch:
                continue
            loss_dict = self.model(batch) if self.scst is None else self.scst(self.model, batch)
            check_finite(loss_dict, it)
            losses = sum(v for k, v in loss_dict.items() if k.startswith("loss_"))
            self.optimizer.zero_grad(set_to_none=True)
            losses.backward()
            if cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.SOLVER.CLIP_GRADIENTS.MAX_NORM)
            self.optimizer.step()
            it += 1
            dt = time.perf_counter() - t0
            if tuner is not None:
                tuner.after_step(dt)
            self.elapsed += dt
            self.scheduler.step(it, self.elapsed)
            reduced = comm.reduce_dict({k: v.detach() for k, v in loss_dict.items()})
            for k, v in reduced.items():
                window[k] = window.get(k, 0.0) + float(v)
            window["total_loss"] = window.get("total_loss", 0.0) + float(sum(v for k, v in reduced.items() if k.startswith("loss_")))
            n_window += 1
            t_window += dt
            bar.update(1)
            if it % cfg.SOLVER.LOG_PERIOD == 0 or it == max_iter:
                rec = {k: v / n_window for k, v in window.items()}
                rec.update(iteration=it, lr=self.scheduler.get_last_lr()[0], time=t_window / n_window, elapsed=self.elapsed)
                if tuner is not None:
                    rec["threads"] = torch.get_num_threads()
                self._log(rec)
                bar.set_postfix(loss=f"{rec['total_loss']:.3f}", lr=f"{rec['lr']:.2e}")
                window, n_window, t_window = {}, 0, 0.0
            if cfg.SOLVER.CHECKPOINT_PERIOD > 0 and it % cfg.SOLVER.CHECKPOINT_PERIOD == 0:
                self._checkpoint(LAST, it)
            if cfg.TEST.EVAL_PERIOD > 0 and it % cfg.TEST.EVAL_PERIOD == 0 and it < max_iter:
                self.evaluate(it)
        bar.close()
        self._checkpoint(LAST, it)
        results = self.evaluate(it) if cfg.DATASETS.TEST else None
        self._checkpoint(FINAL, it)
        comm.synchronize()
        logger.info("training done at iteration %d (%.0f s)", it, self.elapsed)
        return results
