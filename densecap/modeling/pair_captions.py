"""Captions of pair regions composed from their two parts (``MODEL.ROI_HEADS.PAIR_RELATIONS``).

With ``MODEL.ROI_HEADS.PAIR_BOXES`` the model adds, at test time, the union boxes of pairs of its
best detections: the box a region showing two objects in a relation is annotated with. Such a
region's own caption names two objects and a relation from one pooled code, which the language
model does poorly (it sees one box, not the two objects in it). Joint inference over the image's
regions does better: each pair region's caption is chosen among

    "<name of part a> <relation> <name of part b>"  and  "<name of part b> <relation> <name of part a>"

where a part's names are its own caption and the shorter forms of it (:func:`phrase_variants`:
"a large striped red star" -> "a red star", "a striped star", ...), and the relations are those
the geometry model (:class:`~densecap.modeling.relation_geometry.RelationGeometry`) finds likely
for the two boxes in that order. Each candidate scores

    log p(candidate | pair region's code) + log p(relation | box of the first part, box of the second)

(the language model reads the pair region's own code, so it picks the wording and the order
relational captions were trained with); the best replaces the region's caption.

Shapes: U: pair regions, N: candidates, T: tokens, D: region code size.
"""
from __future__ import annotations

import itertools
import logging
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from densecap.data.tokenizer import tokenize
from densecap.structures.boxes import xyxy_to_xywh

from .relation_geometry import ARTICLES, RelationGeometry

logger = logging.getLogger(__name__)

__all__ = ["phrase_variants", "compose_pair_captions"]

MAX_MODIFIERS = 3  # words before the head noun that may be dropped (2^3 variants per part)
MIN_RELATION_PROB = 0.1  # relations the geometry gives less are not tried
SCORE_ROWS = 512  # candidates scored per language-model call


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def phrase_variants(caption: str) -> List[str]:
    """The ways of naming a region's object by its caption, longest first: the caption's words
    after its article with any of the (last ``MAX_MODIFIERS``) words before the final one
    dropped; the article is kept ("a"/"an" made to agree) when the caption has one."""
    words = caption.split()
    if not words:
        return []
    has_article = words[0] in ARTICLES
    content = [w for w in words if w not in ARTICLES] if has_article else words
    if not content:
        return []
    keep, mods, head = content[: -1 - MAX_MODIFIERS], content[-1 - MAX_MODIFIERS : -1], content[-1]
    out, seen = [], set()
    for mask in sorted(itertools.product((1, 0), repeat=len(mods)), key=lambda m: -sum(m)):
        ws = keep + [w for w, k in zip(mods, mask) if k] + [head]
        text = " ".join(([_article(ws[0])] if has_article else []) + ws)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


@torch.no_grad()
def compose_pair_captions(
    caption_head,
    vocab,
    geometry: RelationGeometry,
    codes: Tensor,
    part_captions: Sequence[Tuple[str, str]],
    part_boxes: Tensor,
    max_len: int,
) -> Tuple[List[List[int]], List[float]]:
    """Token rows and log-likelihoods of the composed captions of U pair regions.

    codes (U, D): the pair regions' codes; part_captions: U (caption of part a, caption of part
    b); part_boxes (U, 2, 4) xyxy, any one frame. A candidate longer than ``max_len`` tokens is
    not tried; a region with no candidate left gets an empty row (the caller keeps its caption).
    """
    cand_text: List[str] = []
    cand_geo: List[float] = []
    owner: List[int] = []
    boxes = xyxy_to_xywh(part_boxes.detach().float().cpu().numpy().astype(np.float64))  # U 2 4
    for u, (ca, cb) in enumerate(part_captions):
        names = (phrase_variants(ca), phrase_variants(cb))
        for first in (0, 1):
            a, b = boxes[u, first][None], boxes[u, 1 - first][None]
            for rel in geometry.relations:
                lp = float(geometry.log_prob(a, b, rel)[0])
                if lp < np.log(MIN_RELATION_PROB):
                    continue
                for pa in names[first]:
                    for pb in names[1 - first]:
                        text = f"{pa} {rel} {pb}"
                        if len(tokenize(text)) <= max_len:
                            cand_text.append(text)
                            cand_geo.append(lp)
                            owner.append(u)
    rows: List[List[int]] = [[] for _ in part_captions]
    best = [float("-inf")] * len(part_captions)
    lm_best = [0.0] * len(part_captions)
    if not cand_text:
        return rows, lm_best
    ids = [vocab.encode(tokenize(t)) for t in cand_text]
    width = max(len(r) for r in ids)
    tokens = torch.zeros((len(ids), width), dtype=torch.long)
    for i, r in enumerate(ids):
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    own = torch.tensor(owner, dtype=torch.long)
    lm = torch.empty(len(ids))
    for a in range(0, len(ids), SCORE_ROWS):
        sl = slice(a, a + SCORE_ROWS)
        lm[sl] = caption_head.score(codes[own[sl].to(codes.device)], tokens[sl].to(codes.device)).float().cpu()
    total = lm + torch.tensor(cand_geo)
    for i in range(len(ids)):
        u = owner[i]
        if float(total[i]) > best[u]:
            best[u], rows[u], lm_best[u] = float(total[i]), ids[i], float(lm[i])
    return rows, lm_best
