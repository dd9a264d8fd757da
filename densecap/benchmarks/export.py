"""Benchmark task ``export``: the ONNX detector + region-feature graph (``tools/export.py --format
onnx``) run by ONNX Runtime against the same part in PyTorch, seconds per image, in one run.

    python tools/benchmark.py export [--json FILE] [--images 2] [--repeats 2] [--image-size 720]
        [--threads 1] [--config-file configs/...R50-FPN...] [KEY VALUE ...]

Both run :class:`densecap.export.detector.RegionDetector` of the R50-FPN DenseCap config (random
initialisation, frozen BN, as the ``infer`` task builds it) on the same synthetic images, already
resized (long side ``--image-size``) and padded as the model pads: backbone, RPN with NMS, bilinear
sampler, recognition MLP, box refinement, final NMS -- no caption decoding. PyTorch runs under
``torch.inference_mode``; ONNX Runtime with ``--threads`` intra-op threads, default graph
optimisations. Calls alternate between the two. The largest box difference between them is
reported (it must stay within 1e-3 px).

Headline ``ratio`` = median ONNX Runtime seconds per image / median PyTorch seconds per image.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Dict

import numpy as np
import torch

from . import _rcnn_common as C

logger = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    C.add_common_arguments(parser, images=2, repeats=2, batch=1)
    parser.add_argument("--detections", type=int, default=100, help="final boxes per image at most (as the infer task)")
    parser.add_argument("--keep", default="", help="keep the exported .onnx file here")


def run(args) -> Dict:
    import onnxruntime as ort

    from densecap.export.detector import RegionDetector
    from densecap.export.onnx import INPUT_NAMES, OUTPUT_NAMES, export_onnx

    threads, load_before, images = C.start_run(args)
    model, cfg = C.build_densecap(args.config_file, ["TEST.BEAM_SIZE", "1", *args.opts], C.vocabulary(args.vocab_size),
                                  args.freeze_at)
    model.eval()
    model.roi_heads.detections_per_image = int(args.detections)
    batches = [C.densecap_inputs([im]) for im in images]
    feeds = []
    for b in batches:
        x, sizes = model.preprocess_image(b)
        h, w = sizes[0]
        feeds.append((x, torch.tensor([float(h), float(w)]), torch.tensor([float(h), float(w)]), torch.tensor(1.0)))
    H, W = feeds[0][0].shape[-2:]
    if any(f[0].shape[-2:] != (H, W) for f in feeds):
        raise ValueError("the benchmark images must share one padded size")
    path = args.keep or os.path.join(tempfile.mkdtemp(prefix="densecap_export_"), "detector.onnx")
    t0 = time.perf_counter()
    export_onnx(model, path, height=int(H), width=int(W))
    export_s = time.perf_counter() - t0
    det = RegionDetector(model, height=int(H), width=int(W)).eval()
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    outs_t, outs_o = {}, {}

    def step_torch(i: int) -> None:
        with torch.inference_mode():
            outs_t[i] = [t.numpy() for t in det(*feeds[i])]

    def step_onnx(i: int) -> None:
        outs_o[i] = sess.run(OUTPUT_NAMES, {n: t.numpy() for n, t in zip(INPUT_NAMES, feeds[i])})

    to, tt = C.interleaved(step_onnx, step_torch, len(feeds), int(args.repeats), int(args.warmup))
    diffs, counts = [], []
    for i in outs_t:
        a, b = outs_o[i], outs_t[i]
        counts.append((len(a[0]), len(b[0])))
        if len(a[0]) == len(b[0]) and len(a[0]):
            diffs.append(float(np.abs(a[0] - b[0]).max()))
    so_, st_ = C.summary(to), C.summary(tt)
    figures = {
        "ratio": so_["median"] / st_["median"],
        "seconds": so_["median"],
        "onnxruntime_seconds_per_image": so_,
        "pytorch_seconds_per_image": st_,
        "max_box_difference_px": max(diffs) if diffs else None,
        "detections_onnx_torch": counts,
        "export_seconds": export_s,
        "onnx_file_mb": os.path.getsize(path) / 1e6,
        "input_hw": [int(H), int(W)],
        "threads": threads,
        "onnxruntime_version": ort.__version__,
        "config": args.config_file,
        "load_average_before": load_before,
        "load_average_after": C.load_average(),
    }
    C.print_table("export: ONNX Runtime vs PyTorch, detector + region codes (no captions)", [
        ("input", f"{H} x {W}, {threads} thread(s)"),
        ("ONNX Runtime s/image", f"{so_['median']:.3f}"),
        ("PyTorch s/image", f"{st_['median']:.3f}"),
        ("ratio", f"{figures['ratio']:.3f}"),
        ("max |box| difference", f"{figures['max_box_difference_px']}"),
    ])
    return figures
