"""The ``infer`` benchmark for the original DenseCap architecture (``configs/densecap_vgg16_original.yaml``,
``MODEL.META_ARCHITECTURE: "DenseCapOriginal"``) against its compute floor: torchvision's VGG-16
feature extractor alone (``torchvision.models.vgg16().features`` up to relu5_3) on the same
image, in one run, interleaved (see :mod:`densecap.benchmarks._rcnn_common`).

Both are randomly initialised (nothing can be downloaded); the time of this model hardly depends
on the weights: the original's test path runs the recognition network (fc6 25088 -> 4096, fc7) and
greedy LSTM decoding (15 steps, argmax over the vocabulary) on every one of the up to 1000 RPN
proposals before the final NMS, whatever the scores (the model gives the same captions decoding
only the regions the final NMS keeps, whose number does depend on the weights: reported). The original's test-time settings are the
config's (``TEST.BEAM_SIZE 1`` is forced): 1000 proposals, NMS 0.7 / 0.3, 15 tokens; the model gets
the predictor's test-time levers (``optimize_for_inference``: Winograd 3x3 convolutions, packed
linear products; ``TEST.WINOGRAD False TEST.PACKED_LINEAR False`` measures the plain path), the
floor is torchvision's layers as they are.

Headline ``ratio`` = median model seconds per image / median VGG-16 features seconds per image
(target <= 1.6). The per-stage profile (one extra untimed pass, ``--no-profile`` skips it) times
the model's stages through wrappers around them: the backbone, the RPN head, the two NMS, the
bilinear sampler, fc6, fc7, the greedy LSTM and the caption scoring of the kept boxes; it also
counts the proposals sampled and the regions captioned.

Shapes: P: proposals, N: boxes kept by the final NMS.
"""
from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from typing import Dict, List

import torch
from torch import nn

from densecap.inference.speed import optimize_for_inference

from . import _rcnn_common as C

logger = logging.getLogger(__name__)

TARGET_RATIO = 1.6


def is_original(config_file: str) -> bool:
    from densecap.config import load_config

    return load_config(config_file, []).MODEL.META_ARCHITECTURE == "DenseCapOriginal"


def build_floor() -> nn.Module:
    """torchvision's VGG-16 conv1_1 .. relu5_3: ``vgg16().features[:30]`` (index 30 is pool5), built
    by the same ``make_layers`` and initialised as ``VGG`` initialises its convolutions, without
    the 124 M-parameter classifier ``vgg16()`` would also build and initialise."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"], batch_norm=False)[:30]
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return features.eval()


class StageTimer:
    """Wall seconds per stage of one forward of the original-compatible model, taken by wrapping
    its parts (instance attributes and forward hooks; the model's code is not changed). ``undo``
    restores everything."""

    def __init__(self, model: nn.Module):
        from densecap.modeling.original import ops

        self.seconds: Dict[str, float] = defaultdict(float)
        self.counts: Dict[str, int] = {}  # proposals sampled, regions captioned
        self._undo = []
        self._nms_calls = 0

        def wrap(owner, name, label, count=None):
            fn = getattr(owner, name, None)
            if fn is None:  # a part the model does not have (any more): its time goes to "other"
                logger.warning("profile: %s has no %s; not timed separately", type(owner).__name__, name)
                return
            had_own = name in vars(owner)

            @functools.wraps(fn)
            def timed(*a, **k):
                if count is not None:
                    self.counts[count[0]] = int(a[count[1]].shape[0])
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    self.seconds[label() if callable(label) else label] += time.perf_counter() - t

            setattr(owner, name, timed)
            self._undo.append(lambda: setattr(owner, name, fn) if had_own else delattr(owner, name))

        def nms_label():
            self._nms_calls += 1
            return "rpn_nms" if self._nms_calls % 2 == 1 else "final_nms"

        wrap(model.backbone, "forward", "backbone (VGG-16 conv1_1..relu5_3)")
        wrap(model.rpn.head, "forward_original", "rpn_head")
        wrap(ops, "nms", nms_label)
        wrap(ops, "bilinear_roi_pooling", "bilinear_sampler", count=("proposals", 1))
        wrap(model, "_greedy_original", "greedy_lstm", count=("captioned_regions", 0))
        wrap(model.caption_head, "score", "caption_logprobs (kept boxes)")
        rec = getattr(model.roi_heads, "recognition", None)
        for name in ("fc6", "fc7"):
            if getattr(rec, name, None) is not None:
                wrap(getattr(rec, name), "forward", name)

    def undo(self) -> None:
        for u in reversed(self._undo):
            u()
        self._undo = []


def run(args) -> Dict:
    threads, load_before, images = C.start_run(args)
    n = len(images)
    H, W = images[0].shape[:2]
    vocab = C.vocabulary(args.vocab_size)
    # freeze_at 0: the config freezes what the original freezes (only matters for training anyway)
    model, cfg = C.build_densecap(args.config_file, ["TEST.BEAM_SIZE", "1", *args.opts], vocab, 0)
    floor = build_floor()
    model.eval()
    optimize_for_inference(model, cfg)  # the predictor's test-time levers, as tools/infer.py runs it
    batches = [C.densecap_inputs([im]) for im in images]
    with torch.no_grad():
        xs = [model.preprocess_image(b)[0] for b in batches]  # 1 3 H W: BGR x 255 - mean, as the model
    kept, words = [], []

    def step_a(i: int) -> None:
        with torch.no_grad():
            out = model(batches[i])[0]
        inst = out["instances"]
        kept.append(len(inst))
        words.extend(int((t != 0).sum()) for t in inst.pred_caption_tokens)

    def step_b(i: int) -> None:
        with torch.no_grad():
            floor(xs[i])

    ta, tb = C.interleaved(step_a, step_b, n, int(args.repeats), int(args.warmup))
    sa, sb = C.summary(ta), C.summary(tb)
    ratio = sa["median"] / sb["median"]
    with torch.no_grad():
        fmap = floor(xs[0])
    figures = {
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "peer": "vgg16-floor",
        "paired_ratio_median": C.paired_ratio(ta, tb),
        "seconds": sa["median"],
        "densecap_seconds_per_image": sa,
        "vgg16_features_seconds_per_image": sb,
        "densecap_times_per_image": ta,
        "vgg16_features_times_per_image": tb,
        "boxes_after_final_nms_per_image": sorted(kept)[len(kept) // 2],
        "caption_words_mean": sum(words) / max(len(words), 1),
        "rpn_post_nms_topk": int(model.rpn.post_nms_topk),
        "rpn_nms_thresh": float(model.rpn.nms_thresh),
        "final_nms_thresh": float(model.roi_heads.nms_thresh),
        "max_tokens": int(cfg.MODEL.CAPTION.MAX_TOKENS),
        "beam_size": int(cfg.TEST.BEAM_SIZE),
        "inference_levers": dict(model._inference_levers),
        "vocab_size": len(vocab),
        "images": n,
        "repeats": int(args.repeats),
        "image_size_hw": [H, W],
        "vgg16_feature_map_hw": [int(fmap.shape[-2]), int(fmap.shape[-1])],
        "threads": threads,
        "init": "random (no weights downloaded)",
        "config": args.config_file,
    }
    rows = [
        ("model", "s/image"),
        ("densecap original (VGG-16, greedy)", f"{sa['median']:.3f}  (min {sa['min']:.3f}, max {sa['max']:.3f})"),
        ("torchvision vgg16().features[:30]", f"{sb['median']:.3f}  (min {sb['min']:.3f}, max {sb['max']:.3f})"),
        ("ratio densecap / VGG-16 features", f"{ratio:.3f}  (target <= {TARGET_RATIO}; paired median "
                                             f"{figures['paired_ratio_median']:.3f})"),
        ("boxes kept / caption words", f"{figures['boxes_after_final_nms_per_image']} / "
                                       f"{figures['caption_words_mean']:.1f}"),
    ]
    if not args.no_flops:
        b0 = batches[0]
        dc_total = C.count_flops(lambda: model(b0))
        fl = C.count_flops(lambda: floor(xs[0]))
        figures.update({"densecap_total_gflops_per_image": dc_total / 1e9, "vgg16_features_gflops_per_image": fl / 1e9,
                        "flops_ratio": dc_total / fl})
        rows.append(("GFLOP/image densecap / VGG-16 features", f"{dc_total / 1e9:.1f} / {fl / 1e9:.1f} "
                                                               f"({dc_total / fl:.2f}x)"))
    if not args.no_profile:
        timer = StageTimer(model)
        try:
            t = time.perf_counter()
            with torch.no_grad():
                model(batches[0])
            total = time.perf_counter() - t
        finally:
            timer.undo()
        prof = dict(timer.seconds)
        prof["other"] = total - sum(prof.values())
        figures["profile_seconds"] = {"total": total, **prof}
        figures["rpn_proposals_per_image"] = timer.counts.get("proposals")
        figures["captioned_regions_per_image"] = timer.counts.get("captioned_regions")
        rows.append(("profile of one pass (s)", f"total {total:.3f}; {figures['rpn_proposals_per_image']} "
                                                f"proposals, {figures['captioned_regions_per_image']} captioned"))
        for k, v in sorted(prof.items(), key=lambda kv: -kv[1]):
            rows.append((f"  {k}", f"{v:.3f}  ({100 * v / total:.0f} %)"))
    figures["load_average_1min"] = [load_before, C.load_average()]
    rows.append(("load average before/after", f"{load_before:.2f} / {figures['load_average_1min'][1]:.2f}"))
    C.print_table(f"inference, original architecture vs its VGG-16 floor, {W}x{H}, {threads} thread(s), "
                  f"random init, medians of {sa['n']}", rows)
    return figures
