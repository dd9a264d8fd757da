"""Shared parts of the ``train`` and ``infer`` benchmarks: synthetic VG-like inputs, the two models
(the R50-FPN DenseCap config and torchvision's Faster R-CNN R50-FPN peer) and interleaved timing.

Inputs: synthetic scenes of :mod:`densecap.data.synthetic` (coloured shapes on grey backgrounds,
drawn at ``long_side`` and resized to ``long_side x round(long_side * aspect)``), all of the same
size so the peer's ``GeneralizedRCNNTransform`` (min_size = short side, max_size = long side) keeps
them exactly as they are. Targets: Visual-Genome-like, ``gt_per_image`` (+-25 %) boxes of
log-uniform width/height (16 px .. 90 % of the side) with captions of 5-10 words drawn at random
from a vocabulary of ``vocab_size`` words. The SAME boxes go to both models: DenseCap gets the
``batched_inputs`` contract of :class:`densecap.data.dataset.DenseCapDataset` (uint8 image,
``Instances(gt_boxes xyxy, gt_captions)``), the peer gets float images in [0, 1] and
``{"boxes": xyxy, "labels": random 1..90}``.

Weights: none can be downloaded here, so both models are randomly initialised. Both use frozen
BatchNorm (what each does with ImageNet weights: the DenseCap config's NORM FrozenBN, torchvision's
``fasterrcnn_resnet50_fpn`` whenever backbone weights are given) and, by default, the stem and res2
frozen (``freeze_at=2``: the config's FREEZE_AT 2 = torchvision's default trainable_backbone_layers
3), i.e. the compute of the real pretrained recipe. The peer is built from the same parts
``torchvision.models.detection.fasterrcnn_resnet50_fpn`` uses (that builder ignores the frozen
layers without weights and switches to trainable BatchNorm), all its other defaults untouched:
RPN batch 256, RoI batch 512, 2000/1000 proposals (train/test), 91 classes, TwoMLPHead 1024.

Timing: after warmup, each repetition runs every batch on model A and on model B back to back,
alternating which goes first, so machine load hits both alike; medians are reported (and the median
of the per-pair ratios). Threads: 1 by default. On a shared machine whose load exceeds its cores,
every op parallelised over several OpenMP threads waits at the barrier for a descheduled thread
(measured here at load 5 on 2 cores: a (100, 10500) reduction 12.7 ms with 2 threads vs 1.0 ms with
1; whole inference ~4x slower with 2 threads than with 1, for both models), so a multi-threaded
run measures the scheduler. ``--threads N`` applies N to both models.

Shapes: N: images, G: ground-truth boxes, T: caption tokens.
"""
from __future__ import annotations

import logging
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from densecap.data.tokenizer import NUM_SPECIAL, Vocabulary
from densecap.structures import Instances

logger = logging.getLogger(__name__)

CONFIG_FILE = "configs/densecap_R50_FPN_vg.yaml"
VG_VOCAB_SIZE = 10500  # the original's VG vocabulary: words seen >= 15 times, ~10.5k


def add_common_arguments(parser, *, images: int, repeats: int, batch: int) -> None:
    parser.add_argument("--images", type=int, default=images, help="distinct synthetic images")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed passes over the images per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per model first")
    parser.add_argument("--batch", type=int, default=batch, help="images per step (both models)")
    parser.add_argument("--image-size", type=int, default=720, help="longest side in pixels")
    parser.add_argument("--aspect", type=float, default=0.75, help="short side / long side")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both models (default 1, see the module docstring; 0 = torch's default)")
    parser.add_argument("--vocab-size", type=int, default=VG_VOCAB_SIZE,
                        help="caption vocabulary (default: the original's VG vocabulary size)")
    parser.add_argument("--freeze-at", type=int, default=2,
                        help="frozen backbone stages in both models (2 = the pretrained recipe)")
    parser.add_argument("--config-file", default=CONFIG_FILE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("opts", nargs="*", default=[], help="extra densecap config KEY VALUE pairs")


def setup_threads(threads: int) -> int:
    if threads > 0:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def load_average() -> float:
    try:
        import os

        return float(os.getloadavg()[0])
    except OSError:
        return float("nan")


# ---- inputs ------------------------------------------------------------------------------------
def start_run(args) -> Tuple[int, float, List[np.ndarray]]:
    """The common start of both benchmarks: threads, seed, the load average before, and the
    ``max(--images, --batch)`` images. Returns ``(threads, load_before, images)``."""
    threads = setup_threads(args.threads)
    torch.manual_seed(args.seed)
    load_before = load_average()
    n = max(int(args.images), int(args.batch))
    return threads, load_before, make_images(n, args.image_size, args.aspect, args.seed)


def make_images(n: int, long_side: int, aspect: float, seed: int) -> List[np.ndarray]:
    """n RGB uint8 (H, W, 3) synthetic scenes, W = long_side, H = round(long_side * aspect)."""
    from densecap.data.synthetic import make_scene

    h = int(round(long_side * aspect))
    out = []
    for i in range(n):
        img = make_scene(seed, i, size=long_side)[0]
        out.append(np.ascontiguousarray(cv2.resize(img, (long_side, h), interpolation=cv2.INTER_AREA)))
    return out


def make_targets(
    n: int, height: int, width: int, *, gt_per_image: int, vocab_size: int, seed: int
) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Per image (boxes float32 (G, 4) xyxy, captions int64 (G, 10) 0-padded word ids)."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for _ in range(n):
        g = max(1, int(round(rng.uniform(0.75, 1.25) * gt_per_image)))
        w = np.exp(rng.uniform(np.log(16), np.log(0.9 * width), g))
        h = np.exp(rng.uniform(np.log(16), np.log(0.9 * height), g))
        x = rng.uniform(0, width - w)
        y = rng.uniform(0, height - h)
        boxes = np.stack([x, y, x + w, y + h], axis=1).astype(np.float32)
        caps = np.zeros((g, 10), dtype=np.int64)
        for k in range(g):
            L = int(rng.integers(5, 11))
            caps[k, :L] = rng.integers(4, vocab_size, L)  # 0..3 are PAD START END UNK
        out.append((boxes, caps))
    return out


def densecap_inputs(images: Sequence[np.ndarray], targets=None) -> List[Dict]:
    """The ``batched_inputs`` contract (see densecap/data/dataset.py); images are already resized."""
    out = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        d = {"image": torch.from_numpy(img).permute(2, 0, 1).contiguous(), "image_id": i,
             "file_name": f"synthetic_{i}.jpg", "height": h, "width": w, "scale": 1.0}
        if targets is not None:
            boxes, caps = targets[i]
            d["instances"] = Instances((h, w), gt_boxes=torch.from_numpy(boxes), gt_captions=torch.from_numpy(caps))
        out.append(d)
    return out


def peer_inputs(images: Sequence[np.ndarray], targets=None, seed: int = 0):
    """torchvision detection inputs: float images in [0, 1] and {"boxes", "labels"} targets."""
    imgs = [torch.from_numpy(im).permute(2, 0, 1).float().div_(255.0) for im in images]
    if targets is None:
        return imgs, None
    g = torch.Generator().manual_seed(seed)
    tg = [{"boxes": torch.from_numpy(b), "labels": torch.randint(1, 91, (len(b),), generator=g)} for b, _ in targets]
    return imgs, tg


def vocabulary(size: int) -> Vocabulary:
    return Vocabulary([f"w{i}" for i in range(max(size - NUM_SPECIAL, 1))])


# ---- models ------------------------------------------------------------------------------------
def build_densecap(config_file: str, opts: Sequence[str], vocab: Vocabulary, freeze_at: int):
    """The config with random initialisation (MODEL.BACKBONE.WEIGHTS cleared: nothing to download)."""
    from densecap.config import load_config
    from densecap.modeling import build_model

    cfg = load_config(config_file, ["MODEL.BACKBONE.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    model = build_model(cfg, vocab)
    if freeze_at > 0:  # build_backbone skips freezing without weights; do what the recipe does
        model.backbone.freeze(freeze_at)
    return model, cfg


def build_peer(height: int, width: int, freeze_at: int) -> nn.Module:
    """torchvision's Faster R-CNN R50-FPN (what ``fasterrcnn_resnet50_fpn`` builds), random init,
    FrozenBN, stages up to ``freeze_at`` frozen; its transform leaves (height, width) images as is."""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    net = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    # torchvision counts trainable stages from the top: layer4..layer1, conv1 (5 = all)
    trainable = {0: 5, 1: 4, 2: 3, 3: 2, 4: 1, 5: 0}[int(freeze_at)]
    backbone = _resnet_fpn_extractor(net, trainable)
    return FasterRCNN(backbone, num_classes=91, min_size=min(height, width), max_size=max(height, width))


def check_peer_keeps_size(peer: nn.Module, img: Tensor) -> None:
    was = peer.training
    peer.eval()
    with torch.no_grad():
        il, _ = peer.transform([img])
    peer.train(was)
    got = tuple(il.image_sizes[0])
    if got != tuple(img.shape[-2:]):
        raise RuntimeError(f"the peer's transform resized {tuple(img.shape[-2:])} to {got}")


# ---- flops / matmul rate ------------------------------------------------------------------------
def _winograd_conv_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import conv_flop_count

    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


def _packed_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * x_shape[0] * w_shape[0] * w_shape[1]  # (B, I) x (O, I)^T


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` (convolutions and matrix products): the nominal count of each layer,
    whichever kernel ran it (the test-time levers' Winograd convolutions and packed products are
    counted as the direct convolution and the plain product they compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {torch.ops.aten._nnpack_spatial_convolution: _winograd_conv_flops,
              torch.ops.mkldnn._linear_pointwise: _packed_linear_flops}
    with torch.no_grad():
        with FlopCounterMode(display=False, custom_mapping=custom) as fc:
            fn()
    return int(fc.get_total_flops())


def matmul_rate(n: int = 2048, reps: int = 10) -> Dict[str, float]:
    """float32 n x n torch.mm: GFLOP/s (best and median of ``reps``)."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    rates = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        rates.append(2.0 * n**3 / (time.perf_counter() - t) / 1e9)
    return {"best_gflops": max(rates), "median_gflops": statistics.median(rates)}


# ---- interleaved timing ------------------------------------------------------------------------
def interleaved(
    fn_a: Callable[[int], None], fn_b: Callable[[int], None], batches: int, repeats: int, warmup: int
) -> Tuple[List[float], List[float]]:
    """Seconds per call of fn_a(i) and fn_b(i) over ``repeats`` passes of ``batches`` batches,
    A and B alternating (which one goes first alternates too). Warmup calls are not timed."""
    for w in range(warmup):
        fn_a(w % batches)
        fn_b(w % batches)
    ta, tb = [], []
    k = 0
    for r in range(repeats):
        for i in range(batches):
            order = ((fn_a, ta), (fn_b, tb)) if k % 2 == 0 else ((fn_b, tb), (fn_a, ta))
            for fn, acc in order:
                t = time.perf_counter()
                fn(i)
                acc.append(time.perf_counter() - t)
            k += 1
            logger.info("rep %d batch %d: A %.3f s, B %.3f s", r, i, ta[-1], tb[-1])
    return ta, tb


def summary(ts: Sequence[float]) -> Dict[str, float]:
    return {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "n": len(ts)}


def paired_ratio(ta: Sequence[float], tb: Sequence[float]) -> float:
    return statistics.median([a / b for a, b in zip(ta, tb)])


def print_table(title: str, rows: Sequence[Tuple[str, str]]) -> None:
    w = max(len(r[0]) for r in rows)
    print(f"\n{title}\n" + "-" * (w + 24))
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    print("-" * (w + 24))
