"""The order of Torch7's ``torch.sort`` (descending and ascending), ties included.

One port serves both users of the original's sort order: the evaluator (rankings of tied scores)
and the original-compatible model (the order NMS visits tied boxes in). Ascending is the same
algorithm with every comparison reversed (``quicksortascend``), i.e. exactly the descending sort
of the negated values: :func:`torch_sort_ascending`.

Torch7 sorts with ``THTensor_(quicksortdescend)`` (lib/TH/generic/THTensorMath.c): Sedgewick's
1978 quicksort, not stable. Equal values come back in an order that depends on the whole array.
The original DenseCap evaluator ranks detections with it twice (within an image for the greedy
matching, then over all records), so on tied scores its APs depend on that order.

The algorithm, as implemented there (0-based positions, ``M = 10``):

* a subfile ``[L, R]`` is partitioned when it has more than ``M`` elements (the whole array:
  when ``n - 1 > M``). Partition: ``P = (L + R) >> 1``; swap ``P`` and ``L+1``; then
  ``if a[L+1] < a[R]: swap(L+1, R)``; ``if a[L] < a[R]: swap(L, R)``;
  ``if a[L+1] < a[L]: swap(L+1, L)`` (median of three: pivot ``a[L]``, ``a[L+1] >= a[L] >= a[R]``
  are sentinels). ``i = L+1, j = R``; repeat: advance ``i`` while ``a[i] > piv`` (after a first
  step), retreat ``j`` while ``a[j] < piv``; stop if ``j < i``, else swap ``i, j`` (also when
  ``i == j``). Then swap ``L, j``; the subfiles are ``[L, j-1]`` and ``[i, R]``.
* after all partitions, one insertion sort over the whole array, moving an element only past
  strictly greater ones (so it is stable).

What this module exploits (both exact, not approximations):

1. The final insertion sort is a stable sort, so the result is the stable descending sort of the
   array as the partitions leave it.
2. Subfiles are independent, and a subfile whose values are all distinct cannot change the
   relative order of any two equal values (each of its values occurs there once, and the whole
   subfile stays inside its range), so it need not be partitioned at all. Without ties the
   result is simply the (unique) sorted order.
3. One partition is computed with array operations: with ``Lc`` the positions ``>= L+2`` where
   ``a <= piv`` (ascending) and ``Rc`` the positions ``<= R-1`` where ``a >= piv`` (descending),
   the swaps are exactly the pairs ``(Lc[k], Rc[k])`` while ``Lc[k] <= Rc[k]``; where the pointers
   stop after the last swap follows from those lists (see :func:`_partition_vectorised`).

:func:`torch_sort_descending_literal` is a line-by-line port used to check the fast version.
"""
from __future__ import annotations

from typing import List

import numpy as np

__all__ = ["torch_sort_descending", "torch_sort_descending_literal", "torch_sort_ascending", "argsort_descending"]

M_SMALL = 10  # subfiles of at most this many elements are left to the final insertion sort


def torch_sort_descending_literal(values) -> np.ndarray:
    """Line-by-line port of Torch7's ``quicksortdescend``: the 0-based permutation ``ix`` with
    ``values[ix]`` descending. Slow (pure Python); the reference for the fast version."""
    arr = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
    n = len(arr)
    idx = list(range(n))
    _partition_phase(arr, idx, 0, n - 1, top=True, prune=False)
    for i in range(n - 2, -1, -1):  # insertion sort on the concatenation of subfiles
        if arr[i] < arr[i + 1]:
            piv, pid, j = arr[i], idx[i], i + 1
            while True:
                arr[j - 1] = arr[j]
                idx[j - 1] = idx[j]
                j += 1
                if not (j < n and arr[j] > piv):
                    break
            arr[j - 1] = piv
            idx[j - 1] = pid
    return np.asarray(idx, dtype=np.int64)


def _partition_one(arr: List, idx: List, L: int, R: int):
    """One partition of ``[L, R]`` in place (Python lists); returns ``(i, j)``."""
    P = (L + R) >> 1
    arr[P], arr[L + 1] = arr[L + 1], arr[P]
    idx[P], idx[L + 1] = idx[L + 1], idx[P]
    if arr[L + 1] < arr[R]:
        arr[L + 1], arr[R] = arr[R], arr[L + 1]
        idx[L + 1], idx[R] = idx[R], idx[L + 1]
    if arr[L] < arr[R]:
        arr[L], arr[R] = arr[R], arr[L]
        idx[L], idx[R] = idx[R], idx[L]
    if arr[L + 1] < arr[L]:
        arr[L + 1], arr[L] = arr[L], arr[L + 1]
        idx[L + 1], idx[L] = idx[L], idx[L + 1]
    i, j, piv = L + 1, R, arr[L]
    while True:
        i += 1
        while arr[i] > piv:
            i += 1
        j -= 1
        while arr[j] < piv:
            j -= 1
        if j < i:
            break
        arr[i], arr[j] = arr[j], arr[i]
        idx[i], idx[j] = idx[j], idx[i]
    arr[L], arr[j] = arr[j], arr[L]
    idx[L], idx[j] = idx[j], idx[L]
    return i, j


def _partition_phase(arr: List, idx: List, L: int, R: int, *, top: bool, prune: bool) -> None:
    """All partitions of subfile ``[L, R]`` and its subfiles, in Torch7's order (Python lists).

    ``top``: the whole array (partitioned when it has more than ``M_SMALL + 1`` elements, as
    Torch7's ``done = elements-1 <= M_SMALL``); otherwise a subfile (more than ``M_SMALL``).
    ``prune``: skip subfiles whose values are all distinct (they cannot reorder ties)."""
    stack: List = []
    if (R - L if top else R - L + 1) <= M_SMALL:
        return
    while True:
        if prune and len(set(arr[L:R + 1])) == R - L + 1:
            sz_left = sz_right = 0  # nothing to do here: as if both subfiles were small
        else:
            i, j = _partition_one(arr, idx, L, R)
            sz_left, sz_right = j - L, R - i + 1
        if sz_left <= M_SMALL and sz_right <= M_SMALL:
            if not stack:
                return
            L, R = stack.pop()
        elif sz_left <= M_SMALL or sz_right <= M_SMALL:
            if sz_left > sz_right:
                R = j - 1
            else:
                L = i
        elif sz_left > sz_right:
            stack.append((L, j - 1))
            L = i
        else:
            stack.append((i, R))
            R = j - 1


def _partition_level(a: np.ndarray, ix: np.ndarray, Ls: np.ndarray, Rs: np.ndarray):
    """One partition of each of the disjoint subfiles ``[Ls[s], Rs[s]]`` (each with more than
    ``M_SMALL`` elements), in place, with array operations over all of them at once (subfiles
    are independent, so the order in which Torch7 visits them does not matter).

    Returns ``(i, j)`` per subfile as the Torch7 loop ends.

    After the median of three, ``Lc`` (ascending positions in ``[L+2, R]`` with ``a <= piv``)
    are where ``i`` may stop and ``Rc`` (descending positions in ``[L+1, R-1]`` with
    ``a >= piv``) where ``j`` may stop. By induction the k-th swap is ``(Lc[k], Rc[k])`` for as
    long as ``Lc[k] <= Rc[k]`` (``K`` swaps; the stretch between the last pair is untouched). In
    the final round ``i`` stops at ``Lc[K]`` or at the nearest swapped ``Rc`` position right of
    ``Lc[K-1]`` (it now holds a value ``<= piv``), whichever comes first; symmetrically ``j``."""

    def swap(p, q, cond=None):
        if cond is not None:
            p, q = p[cond], q[cond]
        va, vb = a[p], a[q]
        a[p], a[q] = vb, va
        ia, ib = ix[p], ix[q]
        ix[p], ix[q] = ib, ia

    S = len(Ls)
    swap((Ls + Rs) >> 1, Ls + 1)
    swap(Ls + 1, Rs, a[Ls + 1] < a[Rs])
    swap(Ls, Rs, a[Ls] < a[Rs])
    swap(Ls + 1, Ls, a[Ls + 1] < a[Ls])
    piv = a[Ls]
    m = Rs - Ls + 1
    first = np.cumsum(m) - m  # where each subfile starts in the concatenation
    seg = np.repeat(np.arange(S), m)
    pos = np.arange(int(m.sum()), dtype=np.int64) + np.repeat(Ls - first, m)
    v, pv = a[pos], np.repeat(piv, m)
    ml = ~(v > pv)
    ml[first] = False  # i is first compared at L+2
    ml[first + 1] = False
    mr = ~(v < pv)
    mr[first] = False  # j is first compared at R-1 and stops at L+1 at the latest
    mr[first + m - 1] = False
    lpos, rpos = pos[ml], pos[mr]  # both ascending, grouped by subfile
    cl = np.bincount(seg[ml], minlength=S)
    cr = np.bincount(seg[mr], minlength=S)
    ol, orr = np.cumsum(cl) - cl, np.cumsum(cr) - cr

    def lc(s, k):  # k-th left candidate of subfile s
        return lpos[ol[s] + k]

    def rc(s, k):  # k-th right candidate of subfile s (counting from the right)
        return rpos[orr[s] + cr[s] - 1 - k]

    npair = np.minimum(cl, cr)
    sk = np.repeat(np.arange(S), npair)
    k = np.arange(int(npair.sum()), dtype=np.int64) - np.repeat(np.cumsum(npair) - npair, npair)
    lp, rp = lc(sk, k), rc(sk, k)
    valid = lp <= rp  # a prefix of each subfile's pairs
    K = np.bincount(sk[valid], minlength=S)
    swap(lp[valid], rp[valid])

    sa = np.arange(S)
    big, small = Rs + 1, Ls - 1
    i = np.where(K < cl, lc(sa, np.minimum(K, cl - 1)), big)  # cl, cr >= 1: the sentinels
    j = np.where(K < cr, rc(sa, np.minimum(K, cr - 1)), small)
    k1, k2 = np.maximum(K - 1, 0), np.maximum(K - 2, 0)
    l1, r1 = lc(sa, np.minimum(k1, cl - 1)), rc(sa, np.minimum(k1, cr - 1))
    l2, r2 = lc(sa, np.minimum(k2, cl - 1)), rc(sa, np.minimum(k2, cr - 1))
    s_pos = np.where(r1 > l1, r1, np.where(K >= 2, r2, big))
    t_pos = np.where(r1 > l1, l1, np.where(K >= 2, l2, small))
    i = np.where(K >= 1, np.minimum(i, s_pos), i)
    j = np.where(K >= 1, np.maximum(j, t_pos), j)
    swap(Ls, j)
    return i, j


def torch_sort_descending(values) -> np.ndarray:
    """The 0-based permutation Torch7's ``torch.sort(x, 1, true)`` returns (its ``ix - 1``).

    Same result as :func:`torch_sort_descending_literal`, fast: without ties one numpy sort;
    with ties, all subfiles of one depth are partitioned together with array operations, and
    only subfiles holding at least two values that occur more than once in the array (a subfile
    without a repeated value cannot reorder ties; partitioning one anyway would be harmless).
    Values must not be NaN (the evaluator validates its inputs)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n = x.size
    srt = np.sort(x)
    if not (srt[1:] == srt[:-1]).any():
        return np.argsort(-x, kind="stable").astype(np.int64)
    # Sort keys instead of values: 2 * (rank of the value) + (1 if the value is repeated), so
    # keys compare as the values do and a key's low bit says whether its value is repeated.
    uniq, rank = np.unique(x, return_inverse=True)
    rank = rank.reshape(-1).astype(np.int64)
    a = 2 * rank + (np.bincount(rank, minlength=len(uniq)) > 1)[rank]
    ix = np.arange(n, dtype=np.int64)
    Ls = np.zeros(1 if n - 1 > M_SMALL else 0, dtype=np.int64)
    Rs = np.full(len(Ls), n - 1, dtype=np.int64)
    while len(Ls):
        i, j = _partition_level(a, ix, Ls, Rs)
        Ls, Rs = np.concatenate([Ls, i]), np.concatenate([j - 1, Rs])
        keep = Rs - Ls + 1 > M_SMALL
        Ls, Rs = Ls[keep], Rs[keep]
        if len(Ls):
            t = np.concatenate([[0], np.cumsum(a & 1)])
            keep = t[Rs + 1] - t[Ls] >= 2
            Ls, Rs = Ls[keep], Rs[keep]
    return ix[np.argsort(-a, kind="stable")]


def argsort_descending(values, *, stable: bool = False) -> np.ndarray:
    """Descending order of ``values``: Torch7's order on ties (default, as the original) or,
    with ``stable=True``, ties in input order."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if stable:
        return np.argsort(-x, kind="stable").astype(np.int64)
    return torch_sort_descending(x)


def torch_sort_ascending(values) -> np.ndarray:
    """The 0-based permutation Torch7's ``torch.sort(x)`` (ascending, ``quicksortascend``) returns.

    ``quicksortascend`` is ``quicksortdescend`` with ``<`` and ``>`` exchanged everywhere, so on
    ``x`` it makes exactly the moves the descending sort makes on ``-x``."""
    return torch_sort_descending(-np.asarray(values, dtype=np.float64).reshape(-1))
