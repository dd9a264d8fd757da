"""Evaluate a model on ``DATASETS.TEST[0]``: one function for periodic, --eval-only and demo use.

Images are sharded over DDP ranks; the evaluator gathers them. Returns the metrics dict on every
rank (``map``, ``detmap``, every AP, plus caption-accuracy figures for region captions).
"""
from __future__ import annotations

import logging
import time
from typing import Dict, Optional

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from densecap.data.dataset import collate
from densecap.data.tokenizer import Vocabulary
from densecap.modeling.capabilities import IMAGE_CAPTION, REGIONS, capabilities
from densecap.utils import comm

from .build import build_dataset

logger = logging.getLogger(__name__)


def evaluate_model(cfg, model: torch.nn.Module, vocab: Vocabulary) -> Optional[dict]:
    if not cfg.DATASETS.TEST:
        return None
    caps = capabilities(model)
    if not caps:
        raise TypeError(f"{type(model).__name__} declares no capabilities (see densecap.modeling.capabilities)")
    if REGIONS not in caps:  # a whole-image captioner: BLEU/METEOR/ROUGE-L/CIDEr
        return evaluate_image_captioner(cfg, model, vocab)
    return evaluate_dense(cfg, model, vocab)


@torch.no_grad()
def run_inference(cfg, model: torch.nn.Module, dataset, evaluators, desc: str = "eval", *,
                  reference_attention: bool = False) -> None:
    """Run ``model`` over this rank's share of ``dataset``; feed every evaluator.

    ``reference_attention``: also add to each output, as ``reference_attention``, the attention the
    model's whole-image caption head uses to read the image's reference captions
    (``model.image_caption_attention``; for :class:`ReferenceAttentionGrounding`)."""
    for ev in evaluators:
        ev.reset()
    rank, world = comm.get_rank(), comm.get_world_size()
    shard = Subset(dataset, list(range(rank, len(dataset), world)))
    loader = DataLoader(
        shard,
        batch_size=max(1, cfg.TEST.IMS_PER_BATCH),
        shuffle=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=collate,
    )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for batch in tqdm(loader, desc=desc, disable=not comm.is_main_process(), dynamic_ncols=True, mininterval=2.0):
        if not batch:
            continue
        for b in batch:
            b["image"] = b["image"].to(device)
        outputs = model(batch)
        outputs = [{k: (v.to("cpu") if hasattr(v, "to") else v) for k, v in o.items()} for o in outputs]
        if reference_attention:
            for o, ref in zip(outputs, getattr(model, "module", model).image_caption_attention(batch)):
                o["reference_attention"] = ref
        for ev in evaluators:
            ev.process(batch, outputs)
    model.train(was_training)


def evaluate_dense(cfg, model: torch.nn.Module, vocab: Vocabulary) -> dict:
    from densecap.evaluation.densecap_eval import DenseCapEvaluator
    from densecap.evaluation.region_accuracy import RegionCaptionAccuracy

    name = cfg.DATASETS.TEST[0]
    dataset = build_dataset(cfg, name, is_train=False, vocab=vocab, max_images=cfg.TEST.MAX_IMAGES)
    evaluator = DenseCapEvaluator.from_config(cfg, dataset=dataset, vocab=vocab)
    accuracy = RegionCaptionAccuracy(dataset=dataset)
    evaluators = [evaluator, accuracy]
    image_captions = None  # the whole-image captions of a joint model (MODEL.IMAGE_CAPTION.ENABLED)
    if IMAGE_CAPTION in capabilities(model) and dataset.num_images_with_captions():
        from densecap.evaluation.attention_grounding import AttentionGrounding, ReferenceAttentionGrounding
        from densecap.evaluation.image_caption_eval import ImageCaptionEvaluator
        from densecap.evaluation.image_caption_eval import report as report_image_captions

        image_captions = ImageCaptionEvaluator(refs_key="gt_image_captions")
        # does each word's attention fall on the regions it names? (generated and reference captions)
        grounding = AttentionGrounding(vocab)
        grounding_refs = ReferenceAttentionGrounding(vocab)
        evaluators += [image_captions, grounding, grounding_refs]
    t0 = time.perf_counter()
    run_inference(cfg, model, dataset, evaluators, desc=f"eval {name}", reference_attention=image_captions is not None)
    t1 = time.perf_counter()
    results = evaluator.evaluate()
    results["caption_accuracy"] = accuracy.evaluate()
    if image_captions is not None:  # BLEU-1..4, METEOR, ROUGE-L, CIDEr of the whole-image captions
        results["image_caption"] = image_captions.evaluate()
        results["image_caption"]["attention_grounding"] = grounding.evaluate()
        results["image_caption"]["attention_grounding_references"] = grounding_refs.evaluate()
        if comm.is_main_process():
            report_image_captions(results["image_caption"], image_captions, cfg.OUTPUT_DIR, name)
    results["dataset"] = name
    results["num_images"] = len(dataset)
    results["seconds_inference"] = round(t1 - t0, 2)
    results["seconds_metric"] = round(time.perf_counter() - t1, 2)
    if comm.is_main_process():
        logger.info("%s: mAP %.2f, detection mAP %.2f (%d images)", name, results["map"], results["detmap"], len(dataset))
    return results


@torch.no_grad()
def evaluate_image_captioner(cfg, model: torch.nn.Module, vocab: Vocabulary) -> Dict:
    """A whole-image captioner on ``DATASETS.TEST[0]``: BLEU-1..4, METEOR, ROUGE-L, CIDEr, with the
    model's decoding options (``MODEL.IMAGE_CAPTION``: beam size, length penalty, ...); writes
    ``OUTPUT_DIR/image_caption_predictions.json``."""
    from densecap.data.captions import build_caption_dataset
    from densecap.evaluation.image_caption_eval import ImageCaptionEvaluator, report

    name = cfg.DATASETS.TEST[0]
    dataset = build_caption_dataset(cfg, name, vocab, max_images=cfg.TEST.MAX_IMAGES)
    evaluator = ImageCaptionEvaluator()
    t0 = time.perf_counter()
    run_inference(cfg, model, dataset, [evaluator], desc=f"eval {name}")
    t1 = time.perf_counter()
    results = evaluator.evaluate()
    results["dataset"] = name
    results["seconds_inference"] = round(t1 - t0, 2)
    results["seconds_metric"] = round(time.perf_counter() - t1, 2)
    if comm.is_main_process():
        report(results, evaluator, cfg.OUTPUT_DIR, name)
    return results
