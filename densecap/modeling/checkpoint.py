"""Read a checkpoint written by :func:`densecap.engine.checkpoint.save_checkpoint` and build the
model it describes (the checkpoint carries its config and vocabulary; see that module for the
format). Used wherever a trained model is loaded: inference, retrieval, training's resume and
``--eval-only``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Tuple

import torch

from densecap.data.tokenizer import Vocabulary

logger = logging.getLogger(__name__)

__all__ = ["load_checkpoint", "cfg_from_checkpoint", "apply_num_threads", "build_model_from_checkpoint"]


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
    from . import build_model

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
