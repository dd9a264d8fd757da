"""Self-describing checkpoints, written atomically and loadable with ``weights_only=True``.

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
import os
import random
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from densecap.data.tokenizer import Vocabulary
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


def load_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise RuntimeError(f"{path}: cannot load checkpoint ({type(e).__name__}: {e})") from e


def _drop_unknown_keys(saved, defaults, prefix: str = "") -> None:
    """Remove from ``saved`` (in place) the keys ``defaults`` no longer has, with a warning."""
    for k in list(saved.keys()):
        full = prefix + k
        if k not in defaults:
            logger.warning("checkpoint config key %s is not used by this version; ignored", full)
            del saved[k]
        elif isinstance(saved[k], dict) and isinstance(defaults[k], dict):
            _drop_unknown_keys(saved[k], defaults[k], full + ".")


def cfg_from_checkpoint(ckpt: Dict[str, Any]):
    """The checkpoint's config on top of today's defaults; keys a later version removed are
    dropped with a warning, so old checkpoints keep loading."""
    from densecap.config import get_cfg

    cfg = get_cfg()
    if ckpt.get("cfg"):
        saved = cfg.load_cfg(ckpt["cfg"])
        _drop_unknown_keys(saved, cfg)
        cfg.merge_from_other_cfg(saved)
    return cfg


def apply_num_threads(cfg) -> None:
    """Set torch's intra-op thread count from ``cfg.NUM_THREADS`` (0 leaves torch's default)."""
    if int(cfg.NUM_THREADS) > 0:
        torch.set_num_threads(int(cfg.NUM_THREADS))


def build_model_from_checkpoint(path: str, cfg=None, opts=None) -> Tuple[torch.nn.Module, Any]:
    """Build the model a checkpoint describes and load its weights.

    ``cfg`` (optional) overrides the checkpoint's config (e.g. test-time options); ``opts`` are
    ``KEY VALUE`` overrides applied last. Applies the config's ``NUM_THREADS``. Returns
    ``(model in eval mode, cfg)``.
    """
    from densecap.modeling import build_model

    ckpt = load_checkpoint(path)
    base = cfg_from_checkpoint(ckpt)
    if cfg is not None:
        base.merge_from_other_cfg(cfg)
    if opts:
        base.merge_from_list(list(opts))
    vocab = Vocabulary.from_dict(ckpt["vocab"])
    apply_num_threads(base)
    model = build_model(base, vocab)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        logger.warning("%s: missing keys %s, unexpected keys %s", path, missing, unexpected)
    model.eval()
    return model, base
