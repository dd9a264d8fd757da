"""tools/export.py --format onnx: the detector + region-feature graph run by ONNX Runtime gives the
PyTorch model's boxes (within 1e-3 px), scores and region codes."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, os.path.dirname(__file__))

from fake_model import save_tiny_checkpoint  # noqa: E402

from densecap.export.onnx import (  # noqa: E402
    OnnxRegionDetector, TorchRegionDetector, compare, main, padded_size, synthetic_image,
)
from densecap.inference.predictor import DenseCapPredictor  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt = str(root / "tiny.pth")
    save_tiny_checkpoint(ckpt, opts=["MODEL.RPN.POST_NMS_TOPK_TEST", 1000])  # proposal counts vary by image
    out = str(root / "detector.onnx")
    assert main(["--format", "onnx", "--weights", ckpt, "--output", out]) == 0  # includes its own check
    pred = DenseCapPredictor.from_checkpoint(ckpt, device="cpu")
    return {"ckpt": ckpt, "onnx": out, "pred": pred}


def test_onnx_boxes_equal_the_pytorch_model(exported):
    pred = exported["pred"]
    model = pred.model
    h, w = padded_size(model, pred.image_size)
    assert (h, w) == (128, 128)
    onnx_det = OnnxRegionDetector(exported["onnx"], model, pred.image_size, h, w)
    total = 0
    for seed in range(4):
        img = synthetic_image(seed, size=(256, 256))  # resized to 128 x 128: the graph's own shape, no extra padding
        boxes, scores, codes = onnx_det(img)
        ref = pred(img)
        assert len(boxes) == len(ref.boxes) > 0
        np.testing.assert_allclose(boxes, ref.boxes, atol=1e-3, rtol=0)
        np.testing.assert_allclose(scores, ref.scores, atol=1e-5)
        np.testing.assert_allclose(codes, ref.region_codes, atol=1e-4)
        total += len(boxes)
    assert total > 4


def test_onnx_equals_torch_on_padded_inputs_of_other_shapes(exported):
    pred = exported["pred"]
    h, w = padded_size(pred.model, pred.image_size)
    res = compare(OnnxRegionDetector(exported["onnx"], pred.model, pred.image_size, h, w),
                  TorchRegionDetector(pred.model, pred.image_size, h, w),
                  [synthetic_image(s, size=(300 + 40 * s, 500)) for s in range(3)])
    assert res["ok"] and res["same_counts"] and min(res["detections"]) > 0, res
    assert res["boxes_px"] <= 1e-3


def test_export_errors(tmp_path, capsys):
    assert main(["--format", "onnx", "--weights", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "x.onnx")]) == 2
    assert "cannot load the model" in capsys.readouterr().err
