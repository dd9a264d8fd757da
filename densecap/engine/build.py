"""Builders the trainer uses: datasets and loaders, optimizer, LR schedule."""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from typing import List

import torch
from torch.utils.data import ConcatDataset

from densecap.data.catalog import DatasetCatalog
from densecap.data.dataset import DenseCapDataset
from densecap.data.loader import InfiniteLoader
from densecap.data.prepared import load_vocab
from densecap.data.tokenizer import Vocabulary
from densecap.modeling.capabilities import REGIONS, capabilities_from_config
from densecap.utils import comm

logger = logging.getLogger(__name__)


def resolve_dataset(cfg, name: str):
    return DatasetCatalog.resolve(name, cfg.DATASETS.ROOT, max_tokens=cfg.DATASETS.REGIONS_MAX_TOKENS,
                                  min_token_count=cfg.DATASETS.REGIONS_MIN_TOKEN_COUNT)


def image_captions_path(cfg, prepared_dir: str) -> str:
    """DATASETS.IMAGE_CAPTIONS, or captions.json beside ``prepared_dir`` when that is empty."""
    path = cfg.DATASETS.IMAGE_CAPTIONS or os.path.join(os.path.dirname(os.path.abspath(prepared_dir)), "captions.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.IMAGE_CAPTION.ENABLED needs whole-image captions: {path} not found "
            "(set DATASETS.IMAGE_CAPTIONS to a Karpathy-split JSON or a COCO captions file)"
        )
    return path


def _image_caption_index(cfg, prepared_dir: str):
    from densecap.data.captions import image_caption_index

    return image_caption_index(image_captions_path(cfg, prepared_dir))


def load_train_vocab(cfg) -> Vocabulary:
    """The vocabulary of the (first) training dataset's prepared directory; with a joint
    image-caption head (MODEL.IMAGE_CAPTION.ENABLED) followed by the new words of the training
    images' whole-image captions seen at least MODEL.IMAGE_CAPTION.VOCAB_MIN_COUNT times (appended,
    so the prepared region captions keep their word ids)."""
    if REGIONS not in capabilities_from_config(cfg):  # a whole-image captioner (densecap/data/captions.py)
        from densecap.data.captions import load_caption_train_vocab

        return load_caption_train_vocab(cfg)
    prepared_dir, _ = resolve_dataset(cfg, cfg.DATASETS.TRAIN[0])
    vocab = load_vocab(prepared_dir)
    if cfg.MODEL.IMAGE_CAPTION.ENABLED:
        counts: Counter = Counter()
        for name in cfg.DATASETS.TRAIN:
            ds = build_dataset(cfg, name, is_train=True, vocab=vocab)
            if len(ds) and ds.num_images_with_captions() == 0:
                raise ValueError(
                    f"MODEL.IMAGE_CAPTION.ENABLED: no image of {name} has a caption in "
                    f"{image_captions_path(cfg, resolve_dataset(cfg, name)[0])} when matched by "
                    f"{cfg.DATASETS.IMAGE_CAPTIONS_MATCH!r} (check DATASETS.IMAGE_CAPTIONS_MATCH: 'image_id' or 'coco_id')"
                )
            for i in range(len(ds)):
                for toks in ds.image_caption_tokens(i):
                    counts.update(toks)
        new = [w for w in Vocabulary.build(counts, cfg.MODEL.IMAGE_CAPTION.VOCAB_MIN_COUNT).words if w not in vocab]
        if new:
            logger.info("vocabulary: %d region words + %d new words of the whole-image captions (e.g. %s)",
                        len(vocab.words), len(new), ", ".join(new[:8]))
            vocab = Vocabulary(vocab.words + new)
    return vocab


def build_dataset(cfg, name: str, *, is_train: bool, vocab: Vocabulary, max_images: int = 0) -> DenseCapDataset:
    prepared_dir, split = resolve_dataset(cfg, name)
    return DenseCapDataset(
        prepared_dir,
        split,
        max_size=cfg.INPUT.MAX_SIZE,
        flip=bool(cfg.INPUT.RANDOM_FLIP) and is_train,
        max_images=max_images,
        vocab=vocab,
        image_captions=_image_caption_index(cfg, prepared_dir) if cfg.MODEL.IMAGE_CAPTION.ENABLED else None,
        image_caption_match=cfg.DATASETS.IMAGE_CAPTIONS_MATCH,
        image_caption_max_tokens=cfg.MODEL.IMAGE_CAPTION.MAX_TOKENS,
    )


def build_train_loader(cfg, vocab: Vocabulary) -> InfiniteLoader:
    if REGIONS not in capabilities_from_config(cfg):  # a whole-image captioner (densecap/data/captions.py)
        from densecap.data.captions import build_caption_train_loader

        return build_caption_train_loader(cfg, vocab)
    datasets = [build_dataset(cfg, n, is_train=True, vocab=vocab) for n in cfg.DATASETS.TRAIN]
    for n, d in zip(cfg.DATASETS.TRAIN, datasets):
        if d.vocab != vocab:
            raise ValueError(f"dataset {n} was prepared with a different vocabulary than {cfg.DATASETS.TRAIN[0]}")
    dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
    if len(dataset) == 0:
        raise ValueError(f"training datasets {cfg.DATASETS.TRAIN} are empty")
    world = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world != 0:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes")
    return InfiniteLoader(
        dataset,
        batch_size=cfg.SOLVER.IMS_PER_BATCH // world,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        seed=cfg.SEED,
    )


_FIXED_IN_FROZEN = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)


def _stay_in_eval(self, mode: bool = True):
    return torch.nn.Module.train(self, False)


def freeze_all_but(model: torch.nn.Module, prefixes) -> int:
    """``MODEL.TRAIN_ONLY``: keep ``requires_grad`` only on parameters whose names start with one of
    ``prefixes``; returns how many parameters stay trainable (an error if none does)."""
    prefixes = tuple(str(p) for p in prefixes)
    n = 0
    for name, p in model.named_parameters():
        keep = name.startswith(prefixes)
        p.requires_grad_(keep and p.requires_grad)
        n += int(p.requires_grad)
    if n == 0:
        names = sorted({k.split(".")[0] for k, _ in model.named_parameters()})
        raise ValueError(f"MODEL.TRAIN_ONLY {list(prefixes)} matches no trainable parameter; top-level modules: {names}")
    # the normalisation and dropout layers of fully frozen top-level modules stay in eval mode (no
    # BatchNorm statistics drift, no dropout); the modules themselves keep following train()/eval(),
    # since some change what they compute in training (the RPN samples boxes for the ROI heads)
    for child in model.children():
        if not any(p.requires_grad for p in child.parameters()):
            for m in child.modules():
                if isinstance(m, _FIXED_IN_FROZEN):
                    m.train = _stay_in_eval.__get__(m)  # model.train() recurses through this
                    m.eval()
    logger.info("MODEL.TRAIN_ONLY %s: %d parameter tensors trainable, the rest frozen", list(prefixes), n)
    return n


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    base_lr = cfg.SOLVER.BASE_LR
    if len(cfg.MODEL.TRAIN_ONLY):
        freeze_all_but(model, cfg.MODEL.TRAIN_ONLY)
    backbone, other = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (backbone if name.startswith("backbone.") else other).append(p)
    groups = [{"params": other, "lr": base_lr}]
    if backbone and cfg.SOLVER.BACKBONE_LR_FACTOR > 0:
        groups.append({"params": backbone, "lr": base_lr * cfg.SOLVER.BACKBONE_LR_FACTOR})
    elif backbone:
        for p in backbone:
            p.requires_grad_(False)
    name = cfg.SOLVER.OPTIMIZER.upper()
    wd = cfg.SOLVER.WEIGHT_DECAY
    # torch's fused kernels: one pass over all parameters instead of a loop of small ops (Adam on the
    # demo model's 7.1M parameters: 5 ms per step instead of 28 ms on one CPU thread); same update
    # up to float rounding
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if name == "ADAM":
        return torch.optim.Adam(groups, lr=base_lr, betas=tuple(cfg.SOLVER.BETAS), weight_decay=wd, fused=fused)
    if name == "ADAMW":
        return torch.optim.AdamW(groups, lr=base_lr, betas=tuple(cfg.SOLVER.BETAS), weight_decay=wd, fused=fused)
    if name == "SGD":
        return torch.optim.SGD(groups, lr=base_lr, momentum=cfg.SOLVER.MOMENTUM, weight_decay=wd, fused=fused)
    raise ValueError(f"SOLVER.OPTIMIZER: unknown optimizer '{cfg.SOLVER.OPTIMIZER}' (ADAM, ADAMW, SGD)")


class LRScheduler:
    """Warmup followed by a constant, step or cosine schedule.

    Progress is ``iteration / SOLVER.MAX_ITER``; with ``SOLVER.MAX_TIME_SECONDS`` set it is the
    larger of that and ``elapsed / MAX_TIME_SECONDS``, so a time-limited run still anneals fully.
    Step milestones (``SOLVER.STEPS``) are iterations, scaled the same way. Call :meth:`step`
    with the iteration and elapsed training seconds; its state is those two numbers.
    """

    def __init__(self, cfg, optimizer: torch.optim.Optimizer) -> None:
        self.s = cfg.SOLVER
        self.optimizer = optimizer
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.iteration = 0
        self.elapsed = 0.0
        self.step(0, 0.0)

    def progress(self) -> float:
        p = self.iteration / max(1, self.s.MAX_ITER)
        if self.s.MAX_TIME_SECONDS > 0:
            p = max(p, self.elapsed / self.s.MAX_TIME_SECONDS)
        return min(p, 1.0)

    def factor(self) -> float:
        s = self.s
        warm = 1.0
        if s.WARMUP_ITERS > 0 and self.iteration < s.WARMUP_ITERS:
            a = self.iteration / s.WARMUP_ITERS
            warm = s.WARMUP_FACTOR * (1 - a) + a
        name = s.LR_SCHEDULER_NAME.lower()
        p = self.progress()
        if name == "constant":
            sched = 1.0
        elif name == "step":
            sched = s.GAMMA ** sum(1 for step in s.STEPS if p >= step / max(1, s.MAX_ITER))
        elif name == "cosine":
            sched = 0.5 * (1 + math.cos(math.pi * p))
        else:
            raise ValueError(f"SOLVER.LR_SCHEDULER_NAME: unknown schedule '{s.LR_SCHEDULER_NAME}'")
        return warm * sched

    def step(self, iteration: int, elapsed: float) -> None:
        self.iteration, self.elapsed = int(iteration), float(elapsed)
        f = self.factor()
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    def get_last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "elapsed": self.elapsed}

    def load_state_dict(self, state: dict) -> None:
        self.step(state["iteration"], state["elapsed"])


def build_lr_scheduler(cfg, optimizer) -> LRScheduler:
    return LRScheduler(cfg, optimizer)
