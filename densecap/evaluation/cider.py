"""CIDEr-D per caption with document frequencies fixed in advance (a training reward).

pycocoevalcap's ``Cider`` *is* CIDEr-D (Vedantam et al. 2015, sec. 4.3): n-grams 1..4, tf-idf
vectors with raw term counts, the hypothesis's weights clipped by the reference's
(``min(g_hyp, g_ref) * g_ref``), a Gaussian length penalty ``exp(-(l_hyp - l_ref)^2 / (2 * 6^2))``
(the lengths are counted in bigrams, i.e. words - 1), the mean over n and over the references,
times 10. But it takes the document frequencies and the corpus size ``log(N)`` from the very
captions it scores, so it cannot score a few sampled captions against a fixed corpus, and its
pure-Python loop re-vectorises every reference on every call. :class:`CiderD` computes the same
quantity with the document frequencies of a reference corpus given once (the training
references, as self-critical training does) and caches every reference's vector; on the corpus
it was built from, its scores equal pycocoevalcap's (tested).

Captions are strings of space-separated tokens (already tokenised and lower-cased).
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["CiderD", "ngram_counts"]

_Vec = Tuple[List[Dict[tuple, float]], List[float], int]


def ngram_counts(sentence: str, n: int = 4) -> Counter:
    """Counts of every k-gram (k = 1..n) of the space-separated ``sentence``."""
    words = sentence.split()
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


class CiderD:
    """CIDEr-D with the document frequencies of ``corpus``: one list of reference captions per
    image (an n-gram's df = the number of images whose references contain it; the idf's corpus size
    is ``len(corpus)``).

    ``score(hyps, refs)`` -> float64 (B,): CIDEr-D of each hypothesis against its own references.
    """

    def __init__(self, corpus: Sequence[Sequence[str]], *, n: int = 4, sigma: float = 6.0) -> None:
        corpus = [list(r) for r in corpus if len(r)]
        if not corpus:
            raise ValueError("CIDEr-D: the reference corpus is empty")
        self.n = int(n)
        self.sigma = float(sigma)
        self.df: Dict[tuple, float] = defaultdict(float)
        for refs in corpus:
            for ng in set(ng for r in refs for ng in ngram_counts(r, self.n)):
                self.df[ng] += 1.0
        self.log_n = math.log(float(len(corpus)))
        self._cache: Dict[str, _Vec] = {}

    def _vector(self, sentence: str) -> _Vec:
        """tf-idf weights per n-gram order, their norms and the length (in bigrams)."""
        vec: List[Dict[tuple, float]] = [{} for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for ng, tf in ngram_counts(sentence, self.n).items():
            k = len(ng) - 1
            w = float(tf) * (self.log_n - math.log(max(1.0, self.df.get(ng, 0.0))))
            vec[k][ng] = w
            norm[k] += w * w
            if k == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def _ref_vector(self, sentence: str) -> _Vec:
        v = self._cache.get(sentence)
        if v is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            v = self._cache[sentence] = self._vector(sentence)
        return v

    def _sim(self, hyp: _Vec, ref: _Vec) -> float:
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        penalty = math.exp(-((lh - lr) ** 2) / (2.0 * self.sigma ** 2))
        total = 0.0
        for k in range(self.n):
            val = 0.0
            for ng, w in vh[k].items():
                r = vr[k].get(ng)
                if r is not None:
                    val += min(w, r) * r
            if nh[k] != 0 and nr[k] != 0:
                val /= nh[k] * nr[k]
            total += val * penalty
        return total / self.n

    def score_one(self, hyp: str, refs: Sequence[str]) -> float:
        if not refs:
            raise ValueError("CIDEr-D: a hypothesis without references")
        h = self._vector(hyp)
        return 10.0 * sum(self._sim(h, self._ref_vector(r)) for r in refs) / len(refs)

    def score(self, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> np.ndarray:
        if len(hyps) != len(refs):
            raise ValueError(f"CIDEr-D: {len(hyps)} hypotheses but {len(refs)} reference lists")
        return np.array([self.score_one(h, r) for h, r in zip(hyps, refs)], dtype=np.float64)
