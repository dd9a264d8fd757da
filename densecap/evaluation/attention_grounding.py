"""Does the attention look at what the word names? Grounding of whole-image caption attention in
the ground-truth regions of a dense captioning dataset.

For every word ``w`` of an image's generated caption that some, but not all, of the image's
ground-truth region captions contain (so "a", "and" and words no region mentions, such as
"background", are left out), take the regions whose captions contain ``w`` and the attention
map the model used to emit ``w``:

    mass   attention on the cells whose centres lie in those regions (the map sums to 1)
    share  the fraction of the image's cells that lie in them (what uniform attention would give)

``ratio = mean(mass) / mean(share)``: 1 = no better than uniform attention, higher = the maps
follow the named regions. ``entropy`` is the mean entropy of the maps (nats) next to that of the
uniform map over the image's cells (``entropy_uniform``).

Inputs per image (what ``DenseCapDataset`` yields and the joint model returns in eval):
``inputs[i]["instances"]`` with ``gt_boxes`` (R, 4) xyxy in the resized frame and ``gt_captions``
(R, T) word ids; ``inputs[i]["image"]`` (3, H', W'); ``outputs[i]`` with ``image_caption`` (str),
``attention`` (n_words, h, w) and ``attention_cell`` (cell_h, cell_w) in resized-input pixels.

:class:`ReferenceAttentionGrounding` measures the same on the attention the model uses to *read*
each image's reference captions (teacher forcing), which does not depend on what beam search
chooses to say (a model that answers "three shapes on a dark background" names no region). The
model produces those maps (``model.image_caption_attention(inputs)``, added to each output as
``reference_attention`` by ``densecap.engine.evaluation.run_inference``); the evaluators only score
predictions and never run a model.
"""
from __future__ import annotations

import math
from typing import Dict, List

import numpy as np
import torch

from densecap.data.grounding import cell_centres_in_boxes, grounded_words
from densecap.data.tokenizer import UNK, Vocabulary
from densecap.utils import comm

from .evaluator import DatasetEvaluator

__all__ = ["AttentionGrounding", "ReferenceAttentionGrounding"]


class AttentionGrounding(DatasetEvaluator):
    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.reset()

    def reset(self) -> None:
        self.rows: List[Dict] = []  # one per grounded word

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            att = out.get("attention")
            cell = out.get("attention_cell")
            inst = inp.get("instances")
            if att is None or cell is None or inst is None or len(inst) == 0:
                continue
            att = np.asarray(att, dtype=np.float64)  # n h w
            words = str(out.get("image_caption", "")).split()
            if att.ndim != 3 or att.shape[0] != len(words) or not words:
                continue
            H, W = (int(s) for s in inp["image"].shape[-2:])
            shape = tuple(att.shape[1:])  # h w
            # cells whose centres lie on the image (not padding), and in each ground-truth region
            valid = cell_centres_in_boxes(torch.tensor([[0.0, 0.0, W, H]]), cell, shape)[0].numpy()  # h w
            n_valid = int(valid.sum())
            if n_valid == 0:
                continue
            inside = cell_centres_in_boxes(torch.as_tensor(inst.gt_boxes), cell, shape).numpy()  # R h w
            ids = torch.tensor([[self.vocab.token_to_idx.get(w, UNK) for w in words]])  # 1 n
            contains, grounded = grounded_words(ids, torch.as_tensor(inst.gt_captions).long())  # 1 n R, 1 n
            contains, grounded = contains[0].numpy(), grounded[0].numpy()
            for t, word in enumerate(words):
                if not grounded[t]:
                    continue
                mask = inside[contains[t]].any(axis=0) & valid  # h w
                a = att[t] * valid
                total = float(a.sum())
                if total <= 0:
                    continue
                p = a[valid] / total
                self.rows.append({
                    "word": word,
                    "mass": float(a[mask].sum() / total),
                    "share": float(mask.sum() / n_valid),
                    "entropy": float(-(p[p > 0] * np.log(p[p > 0])).sum()),
                    "entropy_uniform": math.log(n_valid),
                })

    def evaluate(self) -> Dict:
        rows = [r for part in comm.all_gather(self.rows) for r in part]
        if not rows:
            return {"num_words": 0}
        mass = float(np.mean([r["mass"] for r in rows]))
        share = float(np.mean([r["share"] for r in rows]))
        return {
            "num_words": len(rows),
            "mass": round(mass, 4),
            "share": round(share, 4),
            "ratio": round(mass / max(share, 1e-12), 3),
            "entropy": round(float(np.mean([r["entropy"] for r in rows])), 3),
            "entropy_uniform": round(float(np.mean([r["entropy_uniform"] for r in rows])), 3),
        }


class ReferenceAttentionGrounding(AttentionGrounding):
    """:class:`AttentionGrounding` of the attention over each image's reference captions, read by
    the model with teacher forcing: ``outputs[i]["reference_attention"]`` is
    ``{"captions": [str] * K, "attention": (K, T, h, w), "attention_cell": (cell_h, cell_w)}`` (what
    ``model.image_caption_attention`` returns per image) or None."""

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            ref = out.get("reference_attention")
            if ref is None:
                continue
            for caption, att in zip(ref["captions"], ref["attention"]):
                n = len(caption.split())
                super().process([inp], [{"image_caption": caption, "attention": att[:n], "attention_cell": ref["attention_cell"]}])
