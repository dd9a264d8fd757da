"""Benchmark task ``infer``: test-time images per second of the R50-FPN DenseCap config (1000
proposals, every final box captioned, greedy) against torchvision's Faster R-CNN R50-FPN in eval
mode (its default 1000 proposals) on the same images and size, in one run, plus the compute floor.

    python tools/benchmark.py infer [--json FILE] [--images 4] [--repeats 3] [--batch 1]
        [--image-size 720] [--threads N] [--detections 100] [--vocab-size 10500] [KEY VALUE ...]

Inputs, models and the interleaved timing: see :mod:`densecap.benchmarks._rcnn_common`. Both
models are randomly initialised (no weights can be downloaded). With random weights the final
NMS (0.3) keeps far more boxes than a trained model (whose objectness concentrates on objects),
so ``--detections`` (``model.roi_heads.detections_per_image``, default 100) keeps the best 100 —
the original's typical 80-110 captioned boxes per image; the number surviving the NMS before that
cap is reported (``--detections 0`` captions all of them). Random weights rarely predict END, so
greedy decoding usually runs the full MAX_TOKENS + 1 steps: the captioning cost measured is the
worst case. The peer keeps all its defaults (score threshold 0.05, at most 100 detections).

Compute floor: the backbone's FLOPs per image (``torch.utils.flop_counter.FlopCounterMode`` over
the backbone forward at the benchmark size, padded as the model pads) divided by the machine's
float32 matrix-multiply rate (best of a few 2048 x 2048 ``torch.mm``); each model's seconds per
image over that floor says how far it is from it. The FLOPs of the whole forward of each model
(counted the same way: convolutions and matrix products, the caption LSTM's included) are
reported too. The matmul rate is the best of 10 timings: on a shared machine it swings with the
load (94-193 GFLOP/s on one thread here), so the floor is the unloaded one and the distance from it
includes the load.

Test-time levers: the DenseCap model gets the predictor's (``optimize_for_inference``: by default
frozen batch norms folded, 3x3 convolutions through NNPACK's Winograd kernel, a channels_last stem,
linear layers through oneDNN-packed weights; ``TEST.FOLD_BN False TEST.WINOGRAD False
TEST.CHANNELS_LAST False TEST.PACKED_LINEAR False`` measures the plain path, ``TEST.QUANTIZE int8``
the opt-in quantization, ``TEST.PRECISION bfloat16`` the opt-in bfloat16 autocast). Both models run under ``torch.inference_mode``. The peer is
torchvision's model as users get it, nothing folded; ``--peer-precision bfloat16`` runs its whole
forward under bfloat16 autocast, for a like-for-like comparison with ``TEST.PRECISION bfloat16``.

Headline ``ratio`` = median DenseCap seconds per image / median detector seconds per image
(target <= 0.8).

The original architecture (``--config-file configs/densecap_vgg16_original.yaml``, or any config
with ``MODEL.META_ARCHITECTURE "DenseCapOriginal"``) is measured against its own compute floor
instead, torchvision's VGG-16 feature extractor alone on the same image (``--peer vgg16-floor``,
chosen automatically for that config; target <= 1.6): see :mod:`densecap.benchmarks._vgg16_floor`.
"""
from __future__ import annotations

import logging
from typing import Dict

import torch

from densecap.inference.speed import optimize_for_inference

from . import _rcnn_common as C

logger = logging.getLogger(__name__)

TARGET_RATIO = 0.8


def add_arguments(parser) -> None:
    C.add_common_arguments(parser, images=4, repeats=3, batch=1)
    parser.add_argument("--detections", type=int, default=100,
                        help="boxes captioned per image at most (TEST.DETECTIONS_PER_IMAGE; 0 = all)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP counts and the floor")
    parser.add_argument("--peer", choices=("auto", "fasterrcnn", "vgg16-floor"), default="auto",
                        help="what the model is timed against (auto: vgg16-floor for the original "
                             "architecture's config, torchvision's Faster R-CNN otherwise)")
    parser.add_argument("--peer-precision", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: the peer's forward under torch.autocast (compare with TEST.PRECISION bfloat16)")
    parser.add_argument("--no-profile", action="store_true",
                        help="vgg16-floor: skip the per-stage profile of one pass")
    parser.add_argument("--folder", type=int, default=0,
                        help="instead: tools/infer.py folder throughput on this many images, pipelined vs sequential "
                             "(see densecap/benchmarks/folder.py)")
    parser.add_argument("--folder-workers", type=int, default=2)
    parser.add_argument("--folder-size", type=int, default=320, help="folder images' width (height 3/4 of it)")


def run(args) -> Dict:
    if args.folder:
        from .folder import run_folder

        return run_folder(args)
    from . import _vgg16_floor

    peer = args.peer
    if peer == "auto":
        peer = "vgg16-floor" if _vgg16_floor.is_original(args.config_file) else "fasterrcnn"
    if peer == "vgg16-floor":
        return _vgg16_floor.run(args)
    threads, load_before, images = C.start_run(args)
    n = len(images)
    H, W = images[0].shape[:2]
    vocab = C.vocabulary(args.vocab_size)
    opts = ["TEST.BEAM_SIZE", "1", *args.opts]
    model, cfg = C.build_densecap(args.config_file, opts, vocab, args.freeze_at)
    peer = C.build_peer(H, W, args.freeze_at)
    model.eval()
    peer.eval()
    # the predictor's test-time levers (TEST.FOLD_BN, TEST.WINOGRAD, TEST.CHANNELS_LAST,
    # TEST.PACKED_LINEAR, TEST.QUANTIZE, TEST.PRECISION; see densecap/inference/speed.py); both models run under torch.inference_mode, as the predictor does
    optimize_for_inference(model, cfg)

    B = int(args.batch)
    nb = n // B
    dc_batches = [C.densecap_inputs(images[i * B : (i + 1) * B]) for i in range(nb)]
    pr_batches = [C.peer_inputs(images[i * B : (i + 1) * B])[0] for i in range(nb)]
    C.check_peer_keeps_size(peer, pr_batches[0][0])

    # survivors of the final NMS without a cap (one untimed pass over every batch)
    model.roi_heads.detections_per_image = 0
    with torch.inference_mode():
        uncapped = [len(r["instances"]) for b in dc_batches for r in model(b)]
    model.roi_heads.detections_per_image = int(args.detections)
    logger.info("final NMS survivors per image without a cap: %s; cap %d", uncapped, args.detections)

    captioned, detected, caption_words = [], [], []

    def step_a(i: int) -> None:
        with torch.inference_mode():
            out = model(dc_batches[i])
        for r in out:
            inst = r["instances"]
            captioned.append(len(inst))
            caption_words.extend(int((t != 0).sum()) for t in inst.pred_caption_tokens)

    peer_bf16 = args.peer_precision == "bfloat16"

    def step_b(i: int) -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=peer_bf16):
            out = peer(pr_batches[i])
        detected.extend(len(o["boxes"]) for o in out)

    ta, tb = C.interleaved(step_a, step_b, nb, int(args.repeats), int(args.warmup))
    ta = [t / B for t in ta]  # seconds per image
    tb = [t / B for t in tb]
    sa, sb = C.summary(ta), C.summary(tb)
    ratio = sa["median"] / sb["median"]
    figures = {
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "paired_ratio_median": C.paired_ratio(ta, tb),
        "densecap_seconds_per_image": sa,
        "detector_seconds_per_image": sb,
        "densecap_images_per_s": 1.0 / sa["median"],
        "detector_images_per_s": 1.0 / sb["median"],
        "densecap_times_per_image": ta,
        "detector_times_per_image": tb,
        "boxes_captioned_per_image": sorted(captioned)[len(captioned) // 2],
        "final_nms_survivors_uncapped": uncapped,
        "detections_cap": int(args.detections),
        "caption_words_mean": sum(caption_words) / max(len(caption_words), 1),
        "detector_detections_per_image": sorted(detected)[len(detected) // 2],
        "rpn_post_nms_topk": model.rpn.post_nms_topk,
        "rpn_pre_nms_topk_per_level": model.rpn.pre_nms_topk,
        "detector_rpn_post_nms_top_n": peer.rpn._post_nms_top_n["testing"],
        "detector_rpn_pre_nms_top_n_per_level": peer.rpn._pre_nms_top_n["testing"],
        "beam_size": model.beam_size,
        "inference_levers": dict(model._inference_levers),
        "detector_precision": args.peer_precision,
        "vocab_size": len(vocab),
        "batch_size": B,
        "images": n,
        "repeats": int(args.repeats),
        "image_size_hw": [H, W],
        "threads": threads,
        "init": "random (no weights downloaded), frozen BN in both",
        "config": args.config_file,
    }
    if not args.no_flops:
        with torch.no_grad():
            x, _ = model.preprocess_image(dc_batches[0][:1])  # 1 3 H W, padded as the model does
            bb = C.count_flops(lambda: model.backbone(x))
            dc_total = C.count_flops(lambda: model(dc_batches[0][:1]))
            pr_total = C.count_flops(lambda: peer(pr_batches[0][:1]))
        mm = C.matmul_rate()
        floor = bb / (mm["best_gflops"] * 1e9)
        figures.update({
            "backbone_input_hw": [int(x.shape[-2]), int(x.shape[-1])],
            "backbone_gflops_per_image": bb / 1e9,
            "densecap_total_gflops_per_image": dc_total / 1e9,
            "detector_total_gflops_per_image": pr_total / 1e9,
            "matmul_gflops_per_s": mm,
            "floor_seconds_per_image": floor,
            "densecap_over_floor": sa["median"] / floor,
            "detector_over_floor": sb["median"] / floor,
        })
    figures["load_average_1min"] = [load_before, C.load_average()]
    rows = [
        ("model", "s/image   images/s"),
        ("densecap R50-FPN (greedy)", f"{sa['median']:.3f}     {1 / sa['median']:.3f}"),
        ("torchvision fasterrcnn_resnet50_fpn", f"{sb['median']:.3f}     {1 / sb['median']:.3f}"),
        ("ratio densecap / detector", f"{ratio:.3f}  (target <= {TARGET_RATIO}; paired median "
                                      f"{figures['paired_ratio_median']:.3f})"),
        ("boxes captioned/image (uncapped NMS)", f"{figures['boxes_captioned_per_image']} ({uncapped})"),
        ("caption words (mean), detector dets", f"{figures['caption_words_mean']:.1f}, "
                                                f"{figures['detector_detections_per_image']}"),
    ]
    if not args.no_flops:
        rows += [
            ("backbone GFLOP/image", f"{figures['backbone_gflops_per_image']:.1f} at "
                                     f"{figures['backbone_input_hw']}"),
            ("whole forward GFLOP densecap / detector", f"{figures['densecap_total_gflops_per_image']:.1f} / "
                                                         f"{figures['detector_total_gflops_per_image']:.1f}"),
            ("matmul GFLOP/s (best, median)", f"{mm['best_gflops']:.1f}, {mm['median_gflops']:.1f}"),
            ("compute floor s/image", f"{floor:.3f}"),
            ("densecap / floor, detector / floor", f"{figures['densecap_over_floor']:.2f}, "
                                                   f"{figures['detector_over_floor']:.2f}"),
        ]
    rows.append(("load average before/after", f"{load_before:.2f} / {figures['load_average_1min'][1]:.2f}"))
    C.print_table(f"inference, {B} image(s)/batch of {W}x{H}, {threads} threads, random init, medians of {sa['n']}",
                  rows)
    return figures
