"""Fit the joint embedding head on a frozen DenseCap checkpoint from cached region codes.

P: (region code, caption) pairs, D: region code size, T: caption tokens.

The quick second stage (``tools/retrieve.py train-embedding``): the frozen model computes the
region code of every ground-truth box of ``num_images`` training images once (``given_boxes``, eval
mode: exactly the codes it produces at test time), then the :class:`EmbeddingHead` is trained on
random batches of those (code, caption) pairs with the ranking loss (identical captions in a batch
are not negatives). The output is the input checkpoint plus ``embedding_head.*`` weights and
``MODEL.EMBEDDING.ENABLED: True`` in its config, so the DenseCap weights are untouched and
``tools/retrieve.py`` gets both modes from one file.

The same head also trains inside the DenseCap trainer (jointly, or frozen with
``configs/synthetic/embedding_small.yaml``); this path is simply much cheaper, because the network
runs once per image instead of once per step.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Dict, Optional

import numpy as np
import torch

from densecap.data.prepared import load_split, load_vocab
from densecap.utils.io import atomic_open

from densecap.modeling.embedding import build_embedding_head

logger = logging.getLogger(__name__)

__all__ = ["extract_gt_codes", "fit_embedding_head", "train_embedding"]


def extract_gt_codes(rmodel, prepared_dir: str, split: str = "train", *, num_images: int = 1000, seed: int = 0,
                     batch_size: int = 8) -> Dict[str, np.ndarray]:
    """Region codes (P, D) of the GT boxes of ``num_images`` random images and their captions (P, T),
    re-encoded with the model's vocabulary."""
    from .search import codes_only

    data = load_split(prepared_dir, split)
    data_vocab = load_vocab(prepared_dir)
    rng = np.random.default_rng(seed)
    n = len(data) if num_images <= 0 else min(num_images, len(data))
    pick = np.sort(rng.choice(len(data), n, replace=False))
    codes, caps = [], []
    with codes_only(rmodel.model):
        _extract(rmodel, data, data_vocab, pick, batch_size, codes, caps)
    ids = rmodel.encode_captions(caps).numpy() if caps else np.zeros((0, 1), np.int64)
    return {"codes": np.concatenate(codes) if codes else np.zeros((0, rmodel.region_dim), np.float32), "captions": ids}


def _extract(rmodel, data, data_vocab, pick, batch_size, codes, caps) -> None:
    from densecap.data.image_io import ImageReadError

    n = len(pick)
    for a in range(0, n, batch_size):
        idx = [int(i) for i in pick[a : a + batch_size] if data.regions(int(i)).stop > data.regions(int(i)).start]
        if not idx:
            continue
        preds = rmodel.predictor.predict_paths([data.path(i) for i in idx], [data.boxes[data.regions(i)] for i in idx])
        for i, p in zip(idx, preds):
            if isinstance(p, ImageReadError):
                logger.warning("skipping %s", p)
                continue
            codes.append(np.asarray(p.region_codes, np.float32))
            caps.extend(data.caption_strings(i, data_vocab))


def fit_embedding_head(head, codes: np.ndarray, captions: np.ndarray, *, steps: int = 2000, batch_size: int = 128,
                       lr: float = 1e-3, max_seconds: float = 0.0, seed: int = 0, log_every: int = 200) -> Dict[str, Any]:
    """Adam on random batches of pairs, cosine learning-rate decay over ``steps`` or ``max_seconds``
    (whichever ends first). Returns the loss history."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.from_numpy(np.asarray(codes, np.float32))  # P D
    y = torch.from_numpy(np.asarray(captions, np.int64))  # P T
    p = len(x)
    if p < 2:
        raise ValueError(f"need at least 2 (region, caption) pairs to train the embedding, got {p}")
    head.train()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    t0 = time.perf_counter()
    history, window = [], []
    step = 0
    for step in range(1, steps + 1):
        progress = (step - 1) / steps  # cosine decay over the steps or the time budget, whichever ends first
        if max_seconds:
            progress = max(progress, (time.perf_counter() - t0) / max_seconds)
        for grp in opt.param_groups:
            grp["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        b = torch.randint(p, (min(batch_size, p),), generator=g)
        loss = head(x[b], y[b])["loss_embed"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite embedding loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(float(loss.detach()))
        if step % log_every == 0 or step == steps:
            history.append({"step": step, "loss": float(np.mean(window))})
            logger.info("embedding step %d: loss %.4f", step, history[-1]["loss"])
            window = []
        if max_seconds and time.perf_counter() - t0 > max_seconds:
            logger.info("embedding: time budget of %.0f s reached at step %d", max_seconds, step)
            break
    if window:
        history.append({"step": step, "loss": float(np.mean(window))})
    head.eval()
    return {"steps": step, "seconds": time.perf_counter() - t0, "history": history}


@torch.no_grad()
def pair_recall(head, codes: np.ndarray, captions: np.ndarray, k: int = 10, max_pairs: int = 2000) -> float:
    """Fraction of pairs whose caption is among the k nearest distinct captions of their region."""
    x = torch.from_numpy(np.asarray(codes[:max_pairs], np.float32))
    y = torch.from_numpy(np.asarray(captions[:max_pairs], np.int64))
    uniq, inv = torch.unique(y, dim=0, return_inverse=True)
    sims = head.embed_regions(x) @ head.embed_sentences(uniq).t()  # P U
    top = sims.topk(min(k, len(uniq)), dim=1).indices
    return float((top == inv[:, None]).any(dim=1).float().mean())


def train_embedding(weights: str, prepared_dir: str, output: str, *, split: str = "train", val_split: str = "val",
                    num_images: int = 1000, steps: int = 2000, batch_size: int = 128, lr: float = 1e-3,
                    max_seconds: float = 0.0, seed: int = 0, opts=(), device: Optional[str] = None) -> Dict[str, Any]:
    """The whole second stage; writes ``output`` (a full checkpoint). Returns a summary."""
    from densecap.modeling.checkpoint import load_checkpoint
    from densecap.utils.io import atomic_torch_save

    from .search import RetrievalModel

    options = {"device": device} if device else {}
    rmodel = RetrievalModel.from_checkpoint(weights, opts=list(opts), **options)
    cfg = rmodel.predictor.cfg.clone()
    cfg.defrost()
    cfg.MODEL.EMBEDDING.ENABLED = True
    t0 = time.perf_counter()
    cache = output + ".pairs.npz"  # the extracted pairs, reused by a re-run with the same inputs
    key = np.array(f"{rmodel.checkpoint['sha256']}|{os.path.abspath(prepared_dir)}|{split}|{num_images}|{seed}")
    train = None
    if os.path.isfile(cache):
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == str(key):
                train = {"codes": z["codes"], "captions": z["captions"]}
                logger.info("embedding: reusing the %d pairs of %s", len(train["codes"]), cache)
    if train is None:
        train = extract_gt_codes(rmodel, prepared_dir, split, num_images=num_images, seed=seed)
        with atomic_open(cache, "wb") as f:
            np.savez(f, key=key, codes=train["codes"], captions=train["captions"])
    t_extract = time.perf_counter() - t0
    logger.info("embedding: %d training pairs from %s:%s in %.0f s", len(train["codes"]), prepared_dir, split, t_extract)
    torch.manual_seed(seed)
    head = build_embedding_head(cfg, rmodel.vocab, int(train["codes"].shape[1]))
    fit = fit_embedding_head(head, train["codes"], train["captions"], steps=steps, batch_size=batch_size, lr=lr,
                             max_seconds=max_seconds, seed=seed)
    summary: Dict[str, Any] = {"pairs": int(len(train["codes"])), "extract_seconds": t_extract, **fit}
    summary["train_recall@10"] = pair_recall(head, train["codes"], train["captions"])
    try:
        val = extract_gt_codes(rmodel, prepared_dir, val_split, num_images=100, seed=seed)
        if len(val["codes"]) >= 2:
            summary["val_recall@10"] = pair_recall(head, val["codes"], val["captions"])
    except FileNotFoundError:
        pass
    ckpt = load_checkpoint(weights)
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith("embedding_head.")}
    state.update({f"embedding_head.{k}": v.detach().cpu() for k, v in head.state_dict().items()})
    ckpt["model"] = state
    ckpt["cfg"] = cfg.dump()
    for k in ("optimizer", "scheduler", "rng"):
        ckpt.pop(k, None)
    extra = dict(ckpt.get("extra") or {})
    extra["embedding"] = {k: v for k, v in summary.items() if k != "history"}
    extra["embedding"]["base_checkpoint"] = weights
    ckpt["extra"] = extra
    atomic_torch_save(ckpt, output)
    summary["output"] = output
    logger.info("embedding: wrote %s (train recall@10 %.3f%s)", output, summary["train_recall@10"],
                f", val recall@10 {summary['val_recall@10']:.3f}" if "val_recall@10" in summary else "")
    return summary
