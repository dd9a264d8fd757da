"""The fast stage of a region index at scale: approximate nearest neighbours with FAISS.

N: regions covered, E: joint embedding size, Q: queries, K: neighbours asked for, L: nlist.

Fast mode (see :mod:`densecap.retrieval.search`) compares the query's joint embedding with every
region's and re-ranks the best candidates exactly with the language model. Below ``FLAT_MAX``
regions the comparison is one matrix product over the memory-mapped ``embeddings.npy`` of the
shards (exact, ``"type": "flat"``). Above, an inverted-file index answers instead:

* ``ivf_flat`` (``FLAT_MAX`` <= N < ``PQ_MIN``): ``IVF<L>,Flat``, inner product (the embeddings are
  L2-normalised, so this is the cosine); the query scans the ``nprobe`` nearest of ``nlist`` lists.
* ``ivf_pq`` (N >= ``PQ_MIN``): ``IVF<L>,PQ<m>``, ``m`` bytes a region instead of 4 E, so 50M
  regions fit in memory; its similarities are approximate (the LM re-ranking is exact anyway).

Files, next to ``manifest.json`` of the region index::

    ann/trained_<stamp>.faiss   the trained, empty index (coarse quantizer [+ PQ]); parts are added to copies
    ann/ivf_<N>.faiss           the index over regions 0..N-1 (global ids), named by its size

and ``manifest["ann"] = {"type", "factory", "metric", "dim", "count", "nlist", "nprobe", "pq_m",
"file", "trained", "built"}``. ``count`` regions are covered; regions appended to the region index
later (ids >= count) are scanned exactly until :func:`update_ann` adds them to the lists (no
retraining, no rebuild), so a stale ANN index never hides a region.

Built in parts and merged: :func:`train_ann` writes the trained empty index, :func:`build_part`
encodes one range of regions into its own file (any process can build any part), and
:func:`merge_parts` concatenates the parts' inverted lists in id order -- the result is the same index
a single :func:`build_ann` writes. Opened with ``IO_FLAG_MMAP``: the inverted lists stay on disk and
are paged in by the queries that touch them.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

ANN_DIR = "ann"
FLAT_MAX = 200_000  # fewer regions: exact scan of the memory-mapped embeddings
PQ_MIN = 5_000_000  # more regions: product-quantised lists (IVF-Flat would need 4 E bytes a region)
KINDS = ("auto", "flat", "ivf_flat", "ivf_pq")
# nprobe / nlist: recall@10 of the exact scan 0.974 at 1M synthetic regions (nlist 1024; 1/8 gives
# 0.934, 1/32 0.817: tools/benchmark.py retrieve --ann-regions 1000000 sweeps it)
DEFAULT_PROBE_FRACTION = 1 / 4

__all__ = ["choose_params", "train_ann", "build_part", "merge_parts", "build_ann", "update_ann", "AnnIndex",
           "open_ann", "fast_candidates", "KINDS"]


def _faiss():
    import faiss

    return faiss


def choose_params(n: int, dim: int, *, kind: str = "auto", nlist: int = 0, nprobe: int = 0, pq_m: int = 0) -> Dict[str, Any]:
    """The index type and its parameters for ``n`` regions of ``dim``-d embeddings.

    ``nlist`` defaults to ~sqrt(n) rounded to a power of two (at least 16), ``nprobe`` to
    nlist / 4, ``pq_m`` to dim / 8 (bytes a region; a divisor of dim)."""
    if kind not in KINDS:
        raise ValueError(f"ANN index type must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        kind = "flat" if n < FLAT_MAX else ("ivf_flat" if n < PQ_MIN else "ivf_pq")
    p: Dict[str, Any] = {"type": kind, "metric": "inner_product", "dim": int(dim)}
    if kind == "flat":
        return dict(p, factory="Flat", nlist=0, nprobe=0, pq_m=0)
    if not nlist:
        nlist = max(16, 1 << int(round(np.log2(max(1.0, np.sqrt(max(n, 1)))))))
    nlist = int(nlist)
    if not nprobe:
        nprobe = max(1, int(round(nlist * DEFAULT_PROBE_FRACTION)))
    nprobe = int(min(nprobe, nlist))
    if kind == "ivf_pq":
        if not pq_m:
            pq_m = max(1, dim // 8)
            while dim % pq_m:
                pq_m -= 1
        if dim % pq_m:
            raise ValueError(f"pq_m={pq_m} must divide the embedding size {dim}")
        factory = f"IVF{nlist},PQ{int(pq_m)}"
    else:
        pq_m = 0
        factory = f"IVF{nlist},Flat"
    return dict(p, factory=factory, nlist=nlist, nprobe=nprobe, pq_m=int(pq_m))


def train_ann(params: Dict[str, Any], sample: np.ndarray, *, seed: int = 0):
    """The trained, empty FAISS index of ``params`` (see :func:`choose_params`), trained on ``sample`` (S, E)."""
    faiss = _faiss()
    if params["type"] == "flat":
        raise ValueError("a flat fast stage needs no FAISS index")
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    index = faiss.index_factory(int(params["dim"]), params["factory"], faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.cp.seed = int(seed)
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.do_polysemous_training = False  # Hamming-filtered search is not used; it costs minutes of training
    if len(sample) < ivf.nlist:
        raise ValueError(f"{len(sample)} training vectors for {ivf.nlist} lists: lower nlist")
    index.train(sample)
    return index


def build_part(trained, vectors: np.ndarray, ids: np.ndarray, chunk: int = 65536):
    """A copy of the trained index holding ``vectors`` (n, E) under the global ``ids`` (n,)."""
    faiss = _faiss()
    part = faiss.clone_index(trained)
    for a in range(0, len(vectors), chunk):
        part.add_with_ids(np.ascontiguousarray(vectors[a : a + chunk], dtype=np.float32),
                          np.ascontiguousarray(ids[a : a + chunk], dtype=np.int64))
    return part


def merge_parts(trained, parts: Sequence):
    """One index holding the vectors of every part, in the order given (parts are emptied)."""
    faiss = _faiss()
    out = faiss.clone_index(trained)
    for p in parts:
        out.merge_from(p, 0)
    return out


def _write_index(index, path: str) -> None:
    faiss = _faiss()
    tmp = f"{path}.tmp-{os.getpid()}"
    faiss.write_index(index, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AnnIndex:
    """An opened ANN fast stage: ``search(q (Q, E), k) -> (sims (Q, K), ids (Q, K))`` over regions
    ``0..count-1``; ids are -1 where fewer than K regions were found in the probed lists."""

    def __init__(self, index, params: Dict[str, Any]) -> None:
        self.index = index
        self.params = dict(params)
        self.set_nprobe(int(params.get("nprobe", 1)))

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def set_nprobe(self, nprobe: int) -> None:
        _faiss().extract_index_ivf(self.index).nprobe = max(1, int(nprobe))

    def search(self, q: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(q), dtype=np.float32)
        sims, ids = self.index.search(q, int(k))
        return sims, ids


def open_ann(root: str, params: Dict[str, Any], *, mmap: bool = True) -> AnnIndex:
    """The ANN index of the region index at ``root`` described by ``params`` (``manifest["ann"]``)."""
    faiss = _faiss()
    path = os.path.join(root, ANN_DIR, params["file"])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the ANN index listed in the manifest is missing; rebuild it with "
                                f"'tools/retrieve.py ann --index {root}'")
    index = faiss.read_index(path, faiss.IO_FLAG_MMAP if mmap else 0)
    if int(index.ntotal) != int(params["count"]):
        raise ValueError(f"{path}: {index.ntotal} vectors, the manifest says {params['count']}")
    return AnnIndex(index, params)


# ------------------------------------------------------------------------------------------
# on a region index
# ------------------------------------------------------------------------------------------
def _embeddings_range(index, a: int, b: int) -> np.ndarray:
    """float32 (b - a, E) embeddings of global regions a..b-1 (read shard by shard from the memmaps)."""
    out = np.empty((b - a, index.embed_dim), np.float32)
    for off, sh in index.iter_shards():
        lo, hi = max(a, off), min(b, off + sh.num_regions)
        if lo < hi:
            out[lo - a : hi - a] = sh.embeddings[lo - off : hi - off]
    return out


def _sample(index, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    total = index.num_regions
    ids = np.sort(rng.choice(total, size=min(n, total), replace=False)) if n < total else np.arange(total)
    return index.gather_embeddings(ids)


def build_ann(index, *, kind: str = "auto", nlist: int = 0, nprobe: int = 0, pq_m: int = 0, train_size: int = 0,
              part_regions: int = 1_000_000, seed: int = 0) -> Dict[str, Any]:
    """Build (or rebuild) the fast stage of ``index`` (an open :class:`RegionIndex` holding its
    writer lock) over all its regions; returns the parameters now in ``manifest["ann"]``.

    Trained on ``train_size`` regions drawn at random (default 64 per list, at most 256 per list),
    then built ``part_regions`` at a time (:func:`build_part`) and merged (:func:`merge_parts`).
    """
    if not index.has_embeddings:
        raise ValueError(f"{index.root}: the index has no joint embeddings; the fast stage needs them")
    n = index.num_regions
    params = choose_params(n, index.embed_dim, kind=kind, nlist=nlist, nprobe=nprobe, pq_m=pq_m)
    t0 = time.perf_counter()
    if params["type"] == "flat":
        params.update(count=n, file="", trained="")
    else:
        default_train = max(64 * params["nlist"], 16_384 if params["type"] == "ivf_pq" else 0)
        trained = train_ann(params, _sample(index, train_size or min(n, default_train), seed), seed=seed)
        parts = []
        for a in range(0, n, part_regions):
            b = min(n, a + part_regions)
            parts.append(build_part(trained, _embeddings_range(index, a, b), np.arange(a, b)))
        merged = merge_parts(trained, parts)
        stamp = time.strftime("%Y%m%d%H%M%S") + f"-{os.getpid()}"
        os.makedirs(os.path.join(index.root, ANN_DIR), exist_ok=True)
        params.update(count=n, file=f"ivf_{n}.faiss", trained=f"trained_{stamp}.faiss")
        _write_index(trained, os.path.join(index.root, ANN_DIR, params["trained"]))
        _write_index(merged, os.path.join(index.root, ANN_DIR, params["file"]))
    params["built"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    params["build_seconds"] = round(time.perf_counter() - t0, 3)
    _set_params(index, params)
    logger.info("%s: fast stage %s over %d regions in %.1f s", index.root, params["factory"], n, params["build_seconds"])
    return params


def update_ann(index) -> int:
    """Add the regions appended since the ANN index was built (ids count..N-1) to its lists, without
    retraining; returns how many were added. The index must hold its writer lock."""
    params = index.manifest.get("ann")
    if not params:
        return 0
    n, have = index.num_regions, int(params["count"])
    if n <= have:
        return 0
    if params["type"] == "flat":
        _set_params(index, dict(params, count=n))
        return n - have
    ann = open_ann(index.root, params, mmap=False)
    ann.index.add_with_ids(_embeddings_range(index, have, n), np.arange(have, n, dtype=np.int64))
    new = dict(params, count=n, file=f"ivf_{n}.faiss")
    _write_index(ann.index, os.path.join(index.root, ANN_DIR, new["file"]))
    _set_params(index, new)
    return n - have


def _set_params(index, params: Dict[str, Any]) -> None:
    """Record ``params`` in the manifest (atomically), then delete ANN files it no longer names."""
    manifest = dict(index.manifest)
    manifest["ann"] = params
    index._write_manifest(manifest)
    index.manifest = manifest
    index._ann = None
    d = os.path.join(index.root, ANN_DIR)
    keep = {params.get("file"), params.get("trained")}
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if name not in keep:
            os.remove(os.path.join(d, name))


def _flat_scores(index, q: np.ndarray, start: int = 0) -> np.ndarray:
    """float32 (N - start,) cosine of the query (E,) with the embeddings of regions start..N-1."""
    out = np.empty(index.num_regions - start, np.float32)
    for off, sh in index.iter_shards():
        lo = max(start, off)
        hi = off + sh.num_regions
        if lo < hi:
            out[lo - start : hi - start] = sh.embeddings[lo - off :] @ q
    return out


def fast_candidates(index, q: np.ndarray, k: int, *, nprobe: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` regions most similar to the query embedding ``q`` (E,) by the fast stage:
    ``(ids int64 (k',) ascending, sims float32 (k',))`` with k' = min(k, N) (fewer only when the
    probed lists hold fewer than k regions)."""
    q = np.asarray(q, np.float32).reshape(-1)
    n = index.num_regions
    params = index.manifest.get("ann") or {}
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if params.get("type", "flat") == "flat" or not params.get("count"):
        ids, sims = np.arange(n, dtype=np.int64), _flat_scores(index, q)
    else:
        ann = index.ann()
        if nprobe:
            ann.set_nprobe(nprobe)
        s, i = ann.search(q[None], k)
        keep = i[0] >= 0
        ids, sims = i[0][keep].astype(np.int64), s[0][keep].astype(np.float32)
        if ann.count < n:  # regions appended since the build: scanned exactly
            ids = np.concatenate([ids, np.arange(ann.count, n, dtype=np.int64)])
            sims = np.concatenate([sims, _flat_scores(index, q, ann.count)])
    if len(ids) > k:
        part = np.argpartition(-sims, k - 1)[:k]
        ids, sims = ids[part], sims[part]
    order = np.argsort(ids, kind="stable")
    return ids[order], sims[order]
