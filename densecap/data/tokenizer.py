"""The project's one tokeniser and vocabulary.

Tokenisation follows the original DenseCap ``preprocess.py``: a replacement table is applied
first, then the phrase is lower-cased, every character of ``string.punctuation`` is deleted and
the result is split on whitespace. The original ran on Python 2 byte strings and crashed on the
few non-ASCII phrases that survived the table; here accents left after the table are stripped
(NFKD, combining marks dropped) and any other non-ASCII character is removed, so ``"café"`` becomes
``"cafe"`` exactly as the table's ``é -> e`` would have done.
"""
from __future__ import annotations

import json
import string
import unicodedata
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

# The original's replacement table, applied in this order before anything else.
REPLACEMENTS = (
    ("\u00bd", "half"),  # ½
    ("\u2014", "-"),  # — (em dash)
    ("\u2122", ""),  # ™
    ("\u00a2", "cent"),  # ¢
    ("\u00e7", "c"),  # ç
    ("\u00fb", "u"),  # û
    ("\u00e9", "e"),  # é
    ("\u00b0", " degree"),  # °
    ("\u00e8", "e"),  # è
    ("\u2026", ""),  # …
)

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)

PAD_TOKEN = "<PAD>"
START_TOKEN = "<START>"
END_TOKEN = "<END>"
UNK_TOKEN = "<UNK>"
SPECIAL_TOKENS = (PAD_TOKEN, START_TOKEN, END_TOKEN, UNK_TOKEN)
PAD, START, END, UNK = 0, 1, 2, 3
# the ids below NUM_SPECIAL are the special tokens; words start at NUM_SPECIAL
NUM_SPECIAL = len(SPECIAL_TOKENS)


def tokenize(phrase: str) -> List[str]:
    """Split a phrase into tokens exactly as the original DenseCap preprocessing did."""
    for src, dst in REPLACEMENTS:
        if src in phrase:
            phrase = phrase.replace(src, dst)
    phrase = phrase.lower().translate(_PUNCT_TABLE)
    if not phrase.isascii():
        decomposed = unicodedata.normalize("NFKD", phrase)
        phrase = "".join(ch for ch in decomposed if ch.isascii())
        # punctuation produced by the decomposition (rare) goes too
        phrase = phrase.translate(_PUNCT_TABLE)
    return phrase.split()


def detokenize(tokens: Sequence[str]) -> str:
    return " ".join(tokens)


class Vocabulary:
    """Token <-> index mapping. Indices 0..3 are ``<PAD> <START> <END> <UNK>`` (the constants
    ``PAD``, ``START``, ``END``, ``UNK``); the words start at ``NUM_SPECIAL``."""

    def __init__(self, words: Sequence[str]) -> None:
        words = [w for w in words if w not in SPECIAL_TOKENS]
        self.idx_to_token: List[str] = list(SPECIAL_TOKENS) + list(words)
        self.token_to_idx: Dict[str, int] = {t: i for i, t in enumerate(self.idx_to_token)}
        if len(self.token_to_idx) != len(self.idx_to_token):
            raise ValueError("vocabulary has duplicate tokens")

    def __len__(self) -> int:
        return len(self.idx_to_token)

    @property
    def words(self) -> List[str]:
        """The words, without the special tokens (``Vocabulary(v.words) == v``)."""
        return self.idx_to_token[NUM_SPECIAL:]

    def __contains__(self, token: str) -> bool:
        return token in self.token_to_idx

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and other.idx_to_token == self.idx_to_token

    @classmethod
    def build(cls, counts: "Counter[str] | Dict[str, int]", min_count: int) -> "Vocabulary":
        """Words seen at least ``min_count`` times, most frequent first, ties alphabetical."""
        kept = [w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS]
        kept.sort(key=lambda w: (-counts[w], w))
        return cls(kept)

    def encode(self, tokens: Iterable[str]) -> List[int]:
        return [self.token_to_idx.get(t, UNK) for t in tokens]

    def encode_padded(self, captions: Sequence[Sequence[str]], max_tokens: int) -> np.ndarray:
        """(K, max_tokens) int64 word ids of K token lists, 0-padded (``<PAD>``), each truncated to
        ``max_tokens`` words, no START/END."""
        out = np.full((len(captions), int(max_tokens)), PAD, dtype=np.int64)
        for k, toks in enumerate(captions):
            ids = self.encode(toks[: int(max_tokens)])
            out[k, : len(ids)] = ids
        return out

    def decode(self, ids: Iterable[int], stop_at_end: bool = True) -> List[str]:
        out = []
        for i in ids:
            i = int(i)
            if i == END and stop_at_end:
                break
            if i in (PAD, START, END):
                if i == PAD and stop_at_end:
                    break
                continue
            out.append(self.idx_to_token[i])
        return out

    def decode_str(self, ids: Iterable[int]) -> str:
        return " ".join(self.decode(ids))

    def encode_phrase(self, phrase: str, max_tokens: Optional[int] = None) -> Optional[List[int]]:
        toks = tokenize(phrase)
        if max_tokens is not None and len(toks) > max_tokens:
            return None
        return self.encode(toks)

    def map_unknown(self, tokens: Sequence[str]) -> List[str]:
        """Replace out-of-vocabulary tokens by ``<UNK>`` (what the original did to GT captions)."""
        return [t if t in self.token_to_idx else UNK_TOKEN for t in tokens]

    # ---- persistence -------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, List[str]]:
        return {"idx_to_token": list(self.idx_to_token)}

    @classmethod
    def from_dict(cls, d: Dict) -> "Vocabulary":
        toks = d["idx_to_token"]
        if list(toks[: len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS):
            raise ValueError(f"vocabulary must start with {SPECIAL_TOKENS}, got {toks[:NUM_SPECIAL]}")
        return cls(toks[len(SPECIAL_TOKENS):])

    def save(self, path: str) -> None:
        from densecap.utils.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=0))

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        with open(path, "r", encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a valid vocabulary JSON ({e})") from e
        return cls.from_dict(d)
