"""Relational captions of the synthetic dataset: ``"<object> <relation> <object>"``.

A relational region's box is the union of its two objects' boxes, and the annotation names them
in either order: the same box may read "a red star left of a green square" or "a green square
right of a red star" (``densecap.data.synthetic``: the pair is drawn at random among the ordered
pairs in a clear relation). These helpers split such a caption and turn it around, so that
evaluations can compare relations independently of the order the objects are named in.
"""
from __future__ import annotations

from typing import Optional, Tuple

from .shape_words import RELATION_INVERSE as INVERSE
from .shape_words import RELATIONS

__all__ = ["RELATIONS", "INVERSE", "split_relation", "swap_relation", "canonical_relation"]


def split_relation(caption: str) -> Optional[Tuple[str, str, str]]:
    """``(subject, relation, object)`` of a relational caption, or None when it names no relation
    (or the relation has no object on one side)."""
    words = caption.split()
    for i in range(1, len(words)):
        for rel in RELATIONS:
            r = rel.split()
            if words[i : i + len(r)] == r and i + len(r) < len(words):
                return " ".join(words[:i]), rel, " ".join(words[i + len(r):])
    return None


def swap_relation(caption: str) -> Optional[str]:
    """The same relation with the objects named the other way round ("a b left of c" -> "c right of
    a b"), or None for a caption without a relation."""
    parts = split_relation(caption)
    if parts is None:
        return None
    subj, rel, obj = parts
    return f"{obj} {INVERSE[rel]} {subj}"


def canonical_relation(caption: str) -> str:
    """One spelling per relation whatever the object order (the smaller of the caption and its
    swap); other captions are returned unchanged."""
    s = swap_relation(caption)
    return caption if s is None else min(caption, s)
