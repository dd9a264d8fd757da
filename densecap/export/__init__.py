"""Exporting the detector + region-feature part of a DenseCap model (ONNX, TorchScript)."""
from .detector import RegionDetector

__all__ = ["RegionDetector"]
