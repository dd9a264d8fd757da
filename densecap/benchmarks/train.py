"""Benchmark task ``train``: training iterations per second of the R50-FPN DenseCap config against
torchvision's Faster R-CNN R50-FPN training step, on the same images, boxes and size, in one run.

    python tools/benchmark.py train [--json FILE] [--images 4] [--repeats 3] [--batch 1]
        [--image-size 720] [--threads N] [--vocab-size 10500] [--freeze-at 2] [KEY VALUE ...]

One step = zero_grad, forward (losses), backward of their sum, optimizer step (the same SGD,
momentum 0.9, for both models). Inputs, models and the timing protocol: see
:mod:`densecap.benchmarks._rcnn_common` (random initialisation for both: no weights can be
downloaded; frozen BN and stem+res2 frozen as the pretrained recipe, ``--freeze-at 0`` trains all).

Headline ``ratio`` = median DenseCap step time / median detector step time (target <= 1.3).
"""
from __future__ import annotations

import logging
from typing import Dict

import torch

from . import _rcnn_common as C

logger = logging.getLogger(__name__)

TARGET_RATIO = 1.3


def add_arguments(parser) -> None:
    C.add_common_arguments(parser, images=4, repeats=3, batch=1)
    parser.add_argument("--gt-per-image", type=int, default=40, help="mean GT boxes per image (+-25 %%)")


def run(args) -> Dict:
    threads, load_before, images = C.start_run(args)
    n = len(images)
    H, W = images[0].shape[:2]
    targets = C.make_targets(n, H, W, gt_per_image=args.gt_per_image, vocab_size=args.vocab_size, seed=args.seed)
    vocab = C.vocabulary(args.vocab_size)

    model, cfg = C.build_densecap(args.config_file, args.opts, vocab, args.freeze_at)
    peer = C.build_peer(H, W, args.freeze_at)
    model.train()
    peer.train()
    opt_a = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    opt_b = torch.optim.SGD([p for p in peer.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    B = int(args.batch)
    nb = n // B
    dc_batches = [C.densecap_inputs(images[i * B : (i + 1) * B], targets[i * B : (i + 1) * B]) for i in range(nb)]
    pr_batches = [C.peer_inputs(images[i * B : (i + 1) * B], targets[i * B : (i + 1) * B], seed=args.seed + i)
                  for i in range(nb)]
    C.check_peer_keeps_size(peer, pr_batches[0][0][0])

    positives = []  # regions captioned per step (the caption loss's batch)
    caption_loss = model.caption_head.loss

    def counting_loss(codes, captions):
        positives.append(int(codes.shape[0]))
        return caption_loss(codes, captions)

    model.caption_head.loss = counting_loss  # instance attribute: counts only, same computation

    def step_a(i: int) -> None:
        opt_a.zero_grad(set_to_none=True)
        losses = model(dc_batches[i])
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"densecap: non-finite loss {losses}")
        total.backward()
        opt_a.step()

    def step_b(i: int) -> None:
        imgs, tg = pr_batches[i]
        opt_b.zero_grad(set_to_none=True)
        losses = peer(imgs, tg)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"detector: non-finite loss {losses}")
        total.backward()
        opt_b.step()

    ta, tb = C.interleaved(step_a, step_b, nb, int(args.repeats), int(args.warmup))
    del model.caption_head.loss
    sa, sb = C.summary(ta), C.summary(tb)
    ratio = sa["median"] / sb["median"]
    gts = [len(t[0]) for t in targets]
    figures = {
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "paired_ratio_median": C.paired_ratio(ta, tb),
        "densecap_step_seconds": sa,
        "detector_step_seconds": sb,
        "densecap_iter_per_s": 1.0 / sa["median"],
        "detector_iter_per_s": 1.0 / sb["median"],
        "densecap_images_per_s": B / sa["median"],
        "detector_images_per_s": B / sb["median"],
        "densecap_step_times": ta,
        "detector_step_times": tb,
        "batch_size": B,
        "images": n,
        "repeats": int(args.repeats),
        "image_size_hw": [H, W],
        "gt_boxes_per_image_mean": sum(gts) / len(gts),
        "captioned_positives_per_step_median": sorted(positives)[len(positives) // 2] if positives else 0,
        "vocab_size": len(vocab),
        "freeze_at": int(args.freeze_at),
        "threads": threads,
        "load_average_1min": [load_before, C.load_average()],
        "init": "random (no weights downloaded), frozen BN in both",
        "config": args.config_file,
        "rpn_batch_size": cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE,
        "densecap_roi_batch_size": cfg.MODEL.ROI.BATCH_SIZE_PER_IMAGE,
        "detector_rpn_batch_size": peer.rpn.fg_bg_sampler.batch_size_per_image,
        "detector_roi_batch_size": peer.roi_heads.fg_bg_sampler.batch_size_per_image,
    }
    C.print_table(
        f"train step, {B} image(s) of {W}x{H}, {threads} threads, random init, medians of {sa['n']}",
        [
            ("model", "s/step   iter/s   images/s"),
            ("densecap R50-FPN", f"{sa['median']:.3f}   {1 / sa['median']:.3f}    {B / sa['median']:.3f}"),
            ("torchvision fasterrcnn_resnet50_fpn", f"{sb['median']:.3f}   {1 / sb['median']:.3f}    {B / sb['median']:.3f}"),
            ("ratio densecap / detector", f"{ratio:.3f}  (target <= {TARGET_RATIO}; paired median "
                                          f"{figures['paired_ratio_median']:.3f})"),
            ("GT boxes/image, captioned/step", f"{figures['gt_boxes_per_image_mean']:.1f}, "
                                              f"{figures['captioned_positives_per_step_median']}"),
            ("load average before/after", f"{load_before:.2f} / {figures['load_average_1min'][1]:.2f}"),
        ],
    )
    return figures
