"""Self-describing checkpoints, written atomically and loadable with ``weights_only=True``.

This module writes training checkpoints (and restores the RNG state); reading one and building
its model is :mod:`densecap.modeling.checkpoint` (re-exported here).

A checkpoint is a dict of plain types and tensors::

    model        state_dict of the (unwrapped) model
    cfg          the full merged config as a YAML string
    vocab        {"idx_to_token": [...]}
    iteration    int (the number of iterations done)
    optimizer, scheduler        state dicts (training checkpoints only)
    rng          {"torch": ByteTensor, "python": [...], "numpy": {...}}
    best_metric  float or None (validation mAP of the best checkpoint so far)
    extra        dict (anything else the trainer records)
"""
from __future__ import annotations

import logging
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

from densecap.data.tokenizer import Vocabulary
from densecap.modeling.checkpoint import (  # noqa: F401  (loading lives with the models)
    apply_num_threads,
    build_model_from_checkpoint,
    cfg_from_checkpoint,
    load_checkpoint,
)
from densecap.utils.io import atomic_torch_save

logger = logging.getLogger(__name__)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def get_rng_state() -> Dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )


def save_checkpoint(
    path: str,
    *,
    model: torch.nn.Module,
    cfg,
    vocab: Vocabulary,
    iteration: int,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    best_metric: Optional[float] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> None:
    ckpt: Dict[str, Any] = {
        "model": unwrap(model).state_dict(),
        "cfg": cfg.dump(),
        "vocab": vocab.to_dict(),
        "iteration": int(iteration),
        "best_metric": None if best_metric is None else float(best_metric),
        "extra": dict(extra or {}),
    }
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
        ckpt["rng"] = get_rng_state()
    if scheduler is not None:
        ckpt["scheduler"] = scheduler.state_dict()
    atomic_torch_save(ckpt, path)
    logger.info("saved checkpoint %s (iteration %d)", path, iteration)
