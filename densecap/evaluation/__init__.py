"""Evaluation: the DenseCap mAP (exact reproduction of the original protocol), METEOR 1.5 client,
whole-image caption metrics, and readers for the file formats. Every evaluator follows the
``DatasetEvaluator`` protocol (reset / process(inputs, outputs) / evaluate) and scores
predictions only."""
from .caption_eval import caption_metrics, evaluate_caption_files, format_caption_results  # noqa: F401
from .densecap_eval import (  # noqa: F401
    IOU_THRESHOLDS,
    METEOR_THRESHOLDS,
    DenseCapEvaluator,
    ap_key,
    average_precision,
    compute_aps,
    evaluate_dense_captions,
    evaluate_dense_files,
    format_results,
    match_predictions,
    merge_gt_boxes,
)
from .evaluator import DatasetEvaluator, DatasetEvaluators  # noqa: F401
from .meteor import JavaNotFoundError, MeteorError, MeteorScorer, find_java  # noqa: F401
