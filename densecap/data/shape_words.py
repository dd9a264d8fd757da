"""The words of the synthetic shapes dataset, by attribute: one place for the scene generator
(:mod:`densecap.data.synthetic`) and the per-attribute caption accuracy
(:mod:`densecap.evaluation.region_accuracy`)."""
from __future__ import annotations

from typing import Dict

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond")
COLOR_NAMES = ("red", "green", "blue", "yellow", "purple", "orange")
SIZE_WORDS = ("small", "large")
SIZE_SYNONYMS = {"small": "little", "large": "big"}  # the second word a caption may use for a size
FILLS = ("solid", "striped")
# the spatial relations of relational regions ("a r b" == "b RELATION_INVERSE[r] a")
RELATIONS = ("left of", "right of", "above", "below", "next to")
RELATION_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
                    "next to": "next to"}
# the first word of each relation (what the per-attribute accuracy compares)
RELATION_WORDS = tuple(r.split()[0] for r in RELATIONS)


def attribute_words() -> Dict[str, Dict[str, str]]:
    """``{attribute: {word: canonical word}}`` for size (synonyms map to their size), colour, fill,
    shape and relation."""
    sizes = {s: s for s in SIZE_WORDS}
    sizes.update({v: k for k, v in SIZE_SYNONYMS.items()})
    return {
        "size": sizes,
        "colour": {c: c for c in COLOR_NAMES},
        "fill": {f: f for f in FILLS},
        "shape": {s: s for s in SHAPES},
        "relation": {w: w for w in RELATION_WORDS},
    }
