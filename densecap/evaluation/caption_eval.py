"""Whole-image caption metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr (coco-caption, via pycocoevalcap).

Both sides go through the project's one tokeniser (:func:`densecap.data.tokenizer.tokenize`,
words joined by single spaces) instead of coco-caption's Java PTB tokeniser; on that text the
numbers are exactly those of ``pycocoevalcap``'s ``Bleu(4)``, ``Meteor()``, ``Rouge()`` and
``Cider()`` ``compute_score(gts, res)``: BLEU, ROUGE-L and CIDEr are pycocoevalcap's own classes;
METEOR is computed by :class:`~densecap.evaluation.meteor.MeteorScorer.corpus_score`, which
sends the same lines to the same jar (one SCORE per image, one EVAL over all) but with timeouts
and a clear error when Java is missing. Scores are fractions (CIDEr 1.0 = 100 in papers' tables).

Images: metrics are over the predicted images that have ground truth (as coco-caption's
``COCOEvalCap`` evaluates the images of the results file); predictions for unknown images and GT
images without prediction are counted in the output.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .io import CaptionGT, read_caption_gt, read_caption_predictions, tokenized

logger = logging.getLogger(__name__)

METRIC_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider")


def caption_metrics(
    gts: Mapping[Any, Sequence[str]],
    res: Mapping[Any, str],
    *,
    meteor: Any = None,
    tokenize: bool = True,
) -> Dict[str, float]:
    """Corpus metrics of one caption per image against its references.

    Args:
        gts: ``{key: [reference, ...]}`` (at least one reference each).
        res: ``{key: caption}``; the same keys as ``gts``.
        meteor: a :class:`~densecap.evaluation.meteor.MeteorScorer` to use (default: a new one,
            closed at the end).
        tokenize: run both sides through the project's tokeniser first.
    Returns:
        ``{"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider"}`` (fractions).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(gts) != set(res):
        raise ValueError("caption_metrics: gts and res must have the same image keys")
    if not gts:
        raise ValueError("caption_metrics: no images to evaluate")
    keys = list(gts)
    tok = tokenized if tokenize else (lambda s: s)
    g = {k: [tok(r) for r in gts[k]] for k in keys}
    r = {k: [tok(res[k])] for k in keys}
    for k in keys:
        if not g[k]:
            raise ValueError(f"caption_metrics: image {k!r} has no reference caption")
    bleu, _ = Bleu(4).compute_score(g, r, verbose=0)
    rouge, _ = Rouge().compute_score(g, r)
    cider, _ = Cider().compute_score(g, r)
    own = meteor is None
    if own:
        from .meteor import MeteorScorer

        meteor = MeteorScorer()
    try:
        met, _ = meteor.corpus_score([(r[k][0], g[k]) for k in keys])
    finally:
        if own:
            meteor.close()
    return {
        "bleu1": float(bleu[0]),
        "bleu2": float(bleu[1]),
        "bleu3": float(bleu[2]),
        "bleu4": float(bleu[3]),
        "meteor": float(met),
        "rougeL": float(rouge),
        "cider": float(cider),
    }


def match_caption_predictions(gt: CaptionGT, preds: Sequence[tuple]) -> Dict[str, Any]:
    """Pair predictions with GT images. Returns ``gts``/``res`` dicts keyed by GT index + counts.

    A second prediction for the same image is an error (naming the image)."""
    res: Dict[int, str] = {}
    unmatched: List[Any] = []
    for image_id, name, cap in preds:
        i = gt.match(image_id, name)
        if i is None:
            unmatched.append(image_id if image_id is not None else name)
            continue
        if i in res:
            raise ValueError(f"two predictions for the same image ({image_id if image_id is not None else name!r})")
        res[i] = cap
    if unmatched:
        logger.warning("%d predictions match no GT image and are ignored, e.g. %r", len(unmatched), unmatched[:5])
    missing = len(gt) - len(res)
    if missing:
        logger.warning("%d GT images have no prediction; metrics are over the %d predicted images", missing, len(res))
    return {
        "gts": {i: gt.refs[i] for i in res},
        "res": res,
        "ignored_predictions": len(unmatched),
        "gt_images_without_prediction": missing,
    }


def evaluate_caption_files(
    gt_path: str, pred_path: str, *, split: Optional[str] = None, meteor: Any = None
) -> Dict[str, Any]:
    """``tools/evaluate.py --task caption``: read both files, match, compute the metrics."""
    gt = read_caption_gt(gt_path, split)
    preds = read_caption_predictions(pred_path)
    m = match_caption_predictions(gt, preds)
    if not m["res"]:
        raise ValueError(
            f"no prediction in {pred_path} matches an image of {gt_path}"
            + (f" (split '{split}')" if split else "")
            + "; images are matched by image_id/cocoid/imgid, else by file name"
        )
    out: Dict[str, Any] = caption_metrics(m["gts"], m["res"], meteor=meteor)
    out.update(
        num_images=len(m["res"]),
        ignored_predictions=m["ignored_predictions"],
        gt_images_without_prediction=m["gt_images_without_prediction"],
    )
    return out


def format_caption_results(result: Mapping[str, Any]) -> str:
    lines = [f"Caption metrics over {result.get('num_images', '?')} images (fractions; x100 for papers' tables)"]
    lines.append("  ".join(f"{k:>7}" for k in METRIC_KEYS))
    lines.append("  ".join(f"{result[k]:7.4f}" for k in METRIC_KEYS))
    for k in ("ignored_predictions", "gt_images_without_prediction"):
        if result.get(k):
            lines.append(f"  {k.replace('_', ' ')}: {result[k]}")
    return "\n".join(lines)
