"""Inference: ``DenseCapPredictor`` (images -> boxes, captions, region codes) and the pieces of
``tools/infer.py``: input collection, results.json, overlays, the HTML viewer, region features."""
from .features import load_features, save_features  # noqa: F401
from .predictor import DenseCapPredictor, ImageCaptionUnavailable, Prediction  # noqa: F401
from .results import load_results  # noqa: F401
