"""``tools/export.py``: the detector + region-feature part of a checkpoint as an ONNX model.

    tools/export.py --format onnx --weights CKPT --output detector.onnx [--image-size 720]
                    [--height H --width W] [--check IMG ...] [--opset 17]

The graph is :class:`~densecap.export.detector.RegionDetector`: backbone, RPN with its NMS
(ONNX ``NonMaxSuppression``, through torchvision's export support), bilinear sampler, recognition
MLP, box refinement and the final NMS; outputs ``boxes`` [x, y, w, h] original pixels, ``scores``,
``codes`` (region codes for the language model, which stays in PyTorch: greedy/beam decoding is a
data-dependent loop). The input shape is fixed at export: ``images`` (1, 3, H, W), by default
(H, W) = the image size padded to the backbone's divisibility (square); an image is resized so its
longest side is the image size and zero-padded to (H, W) (:meth:`OnnxRegionDetector.prepare`).
An image whose padded size equals (H, W) gives exactly the PyTorch model's boxes; others differ
from the PyTorch predictor only through the extra padding (the ONNX graph and the PyTorch
``RegionDetector`` on the same padded input agree). After exporting, the command runs ONNX Runtime
and PyTorch on ``--check`` images (default: one synthetic image) and reports the largest box
difference; it fails when that exceeds 1e-3 px.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .detector import RegionDetector, preprocess

logger = logging.getLogger(__name__)

INPUT_NAMES = ["images", "image_hw", "orig_hw", "scale"]
OUTPUT_NAMES = ["boxes", "scores", "codes"]
BOX_TOLERANCE_PX = 1e-3

__all__ = ["export_onnx", "OnnxRegionDetector", "TorchRegionDetector", "compare", "main"]


def padded_size(model, image_size: int) -> Tuple[int, int]:
    div = max(int(model.backbone.size_divisibility), 1)
    s = -(-int(image_size) // div) * div
    return s, s


def export_onnx(model, path: str, *, height: int, width: int, opset: int = 17) -> RegionDetector:
    """Write the ONNX graph of ``RegionDetector(model, height, width)`` to ``path``; returns the module."""
    import warnings

    det = RegionDetector(model.eval(), height=height, width=width).eval()
    ex = (torch.zeros((1, 3, height, width)), torch.tensor([float(height), float(width)]),
          torch.tensor([float(height), float(width)]), torch.tensor(1.0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes fixed at export
        torch.onnx.export(det, ex, path, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, opset_version=opset,
                          dynamic_axes={n: {0: "R"} for n in OUTPUT_NAMES}, dynamo=False)
    return det


class _Runner:
    """Shared preprocessing: the model's transform (resize the longest side to ``image_size``,
    normalise), padded to the exported (H, W)."""

    def __init__(self, model, image_size: int, height: int, width: int) -> None:
        self.model, self.image_size, self.hw = model, int(image_size), (int(height), int(width))

    def prepare(self, image: np.ndarray) -> Tuple:
        h0, w0 = image.shape[:2]
        resized, scale = self.model.transform.resize(np.ascontiguousarray(image), self.image_size)
        chw = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)
        x = preprocess(self.model, chw, *self.hw)
        return (x, torch.tensor([float(chw.shape[1]), float(chw.shape[2])]), torch.tensor([float(h0), float(w0)]),
                torch.tensor(float(scale)))


class TorchRegionDetector(_Runner):
    def __init__(self, model, image_size: int, height: int, width: int) -> None:
        super().__init__(model, image_size, height, width)
        self.module = RegionDetector(model.eval(), height=height, width=width).eval()

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(t.numpy() for t in self.module(*self.prepare(image)))


class OnnxRegionDetector(_Runner):
    """``detector(image RGB uint8 (H, W, 3)) -> (boxes (R, 4) xywh original px, scores (R,), codes (R, D))``."""

    def __init__(self, path: str, model, image_size: int, height: int, width: int, threads: int = 1) -> None:
        import onnxruntime as ort

        super().__init__(model, image_size, height, width)
        so = ort.SessionOptions()
        if threads > 0:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        feed = {n: t.numpy() for n, t in zip(INPUT_NAMES, self.prepare(image))}
        return tuple(self.session.run(OUTPUT_NAMES, feed))


def compare(onnx_det: OnnxRegionDetector, torch_det: TorchRegionDetector, images: Sequence[np.ndarray]) -> Dict[str, Any]:
    """Largest |box| / |score| / |code| differences and whether every image gave the same count."""
    worst = {"boxes_px": 0.0, "scores": 0.0, "codes": 0.0, "same_counts": True, "detections": []}
    for im in images:
        a, b = onnx_det(im), torch_det(im)
        worst["detections"].append(int(len(b[0])))
        if len(a[0]) != len(b[0]):
            worst["same_counts"] = False
            continue
        if len(a[0]):
            worst["boxes_px"] = max(worst["boxes_px"], float(np.abs(a[0] - b[0]).max()))
            worst["scores"] = max(worst["scores"], float(np.abs(a[1] - b[1]).max()))
            worst["codes"] = max(worst["codes"], float(np.abs(a[2] - b[2]).max()))
    worst["ok"] = bool(worst["same_counts"] and worst["boxes_px"] <= BOX_TOLERANCE_PX)
    return worst


def synthetic_image(seed: int = 0, size: Tuple[int, int] = (480, 640)) -> np.ndarray:
    """A smooth random RGB uint8 image with a few bright rectangles (something to detect)."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.full((h, w, 3), rng.integers(40, 200, 3), np.uint8)
    for _ in range(6):
        x, y = rng.integers(0, w - 40), rng.integers(0, h - 40)
        img[y : y + rng.integers(20, h // 3), x : x + rng.integers(20, w // 3)] = rng.integers(0, 255, 3)
    return img


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, choices=("onnx",), help="what to write")
    p.add_argument("--weights", required=True, metavar="CKPT")
    p.add_argument("--config-file", default="", metavar="CFG")
    p.add_argument("--output", required=True, metavar="FILE")
    p.add_argument("--image-size", type=int, default=None, help="longest image side (default: the config's INPUT.MAX_SIZE)")
    p.add_argument("--height", type=int, default=0, help="padded input height of the graph (default: image size, padded)")
    p.add_argument("--width", type=int, default=0, help="padded input width of the graph (default: image size, padded)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--check", nargs="*", default=None, metavar="IMG", help="images to compare ONNX Runtime and PyTorch on "
                   "(default: one synthetic image; pass --check with no file to skip)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    from densecap.data.image_io import ImageReadError, read_image
    from densecap.inference.predictor import DenseCapPredictor

    try:
        pred = DenseCapPredictor.from_checkpoint(args.weights, config_file=args.config_file or None, opts=list(args.opts or []),
                                                 image_size=args.image_size, device="cpu")
    except (FileNotFoundError, RuntimeError, ValueError, KeyError) as e:
        print(f"error: cannot load the model: {e}", file=sys.stderr)
        return 2
    model = pred.model.eval()
    h, w = padded_size(model, pred.image_size)
    h, w = args.height or h, args.width or w
    t0 = time.perf_counter()
    export_onnx(model, args.output, height=h, width=w, opset=args.opset)
    print(f"wrote {args.output}: detector + region codes, input (1, 3, {h}, {w}), {time.perf_counter() - t0:.1f} s")
    if args.check is not None and len(args.check) == 0:
        return 0
    images = []
    for p in args.check or []:
        try:
            images.append(read_image(p))
        except ImageReadError as e:
            print(f"error: {p}: {e.reason}", file=sys.stderr)
            return 2
    if not images:
        images = [synthetic_image(0)]
    res = compare(OnnxRegionDetector(args.output, model, pred.image_size, h, w), TorchRegionDetector(model, pred.image_size, h, w),
                  images)
    print(f"check on {len(images)} image(s): detections {res['detections']}, max |box| difference {res['boxes_px']:.2e} px, "
          f"|score| {res['scores']:.2e}, |code| {res['codes']:.2e} -> {'OK' if res['ok'] else 'MISMATCH'}")
    return 0 if res["ok"] else 1
