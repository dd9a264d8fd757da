"""Whole-image caption evaluator: BLEU-1..4, METEOR, ROUGE-L, CIDEr of generated captions.

:class:`ImageCaptionEvaluator` collects the ``image_caption`` predictions of a model's eval
outputs (it never runs a model; ``densecap.engine.evaluation`` does); the metrics are
:func:`densecap.evaluation.caption_eval.caption_metrics`. :func:`report` writes the predictions as
a COCO results list to ``OUTPUT_DIR/image_caption_predictions.json``
(``[{"image_id", "file_name", "caption", "logprob"}]``), so that
``tools/evaluate.py --task caption --gt <captions.json> --pred <that file> --split test`` gives
the same numbers.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List

from densecap.utils import comm

from .evaluator import DatasetEvaluator

logger = logging.getLogger(__name__)

__all__ = ["ImageCaptionEvaluator", "report"]


class ImageCaptionEvaluator(DatasetEvaluator):
    """Collects (image, generated caption, references) pairs; ``evaluate()`` gathers over ranks.

    The references are each input's ``refs_key`` list: ``gt_captions`` for the caption datasets,
    ``gt_image_captions`` for a dense captioning dataset with whole-image captions (its images
    without references are left out).
    """

    def __init__(self, refs_key: str = "gt_captions") -> None:
        self.refs_key = refs_key
        self.reset()

    def reset(self) -> None:
        self.rows: List[Dict] = []

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            if not inp.get(self.refs_key) or out.get("image_caption") is None:
                continue
            self.rows.append({
                "image_id": inp.get("image_id"),
                "file_name": os.path.basename(str(inp.get("file_name", ""))),
                "caption": out["image_caption"],
                "logprob": float(out["image_caption_logprob"]),
                "refs": list(inp[self.refs_key]),
            })

    def evaluate(self) -> Dict:
        from .caption_eval import caption_metrics

        rows = [r for part in comm.all_gather(self.rows) for r in part]
        if not rows:
            raise ValueError(f"image caption evaluation: no image was captioned (or none had '{self.refs_key}' references)")
        gts = {k: r["refs"] for k, r in enumerate(rows)}
        res = {k: r["caption"] for k, r in enumerate(rows)}
        metrics = caption_metrics(gts, res)
        metrics["num_images"] = len(rows)
        self.predictions = [{k: r[k] for k in ("image_id", "file_name", "caption", "logprob")} for r in rows]
        return metrics


def report(results: Dict, evaluator: ImageCaptionEvaluator, output_dir: str, name: str) -> None:
    """Write ``output_dir/image_caption_predictions.json`` (its path goes to
    ``results["predictions_file"]``) and log the metrics; main process only."""
    from densecap.utils.io import atomic_write_json

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "image_caption_predictions.json")
    atomic_write_json(path, evaluator.predictions, indent=1)
    results["predictions_file"] = path
    logger.info(
        "%s whole-image captions: CIDEr %.3f BLEU-4 %.3f METEOR %.3f ROUGE-L %.3f (%d images); e.g. %r",
        name, results["cider"], results["bleu4"], results["meteor"], results["rougeL"],
        results["num_images"], evaluator.predictions[0]["caption"],
    )
