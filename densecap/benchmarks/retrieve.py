"""Benchmark "retrieve": a text query against a 100,000-region index, against the 1 s target.

    python tools/benchmark.py retrieve [--regions 100000] [--region-dim 4096] [--candidates 1000]
                                       [--lm-hidden 256 --lm-vocab 64] [--vg-lm] [--workdir DIR]

Builds (once; reused from ``--workdir``) a synthetic index through the real writer: ``--regions``
regions in 100-region "images", random non-negative region codes of the real size (4096, fc7 of the
VGG-16 recognition network; stored float16 as ``tools/retrieve.py index`` does) and their joint
embeddings from a random :class:`EmbeddingHead` (256-d). The language model is a random
:class:`LSTMCaptionDecoder` of the given size: by default the size of the synthetic demo's
(hidden/embedding 256, a 64-word vocabulary); ``--vg-lm`` adds the original's Visual Genome size
(512 hidden, 10,500 words), whose softmax makes every scored region ~40x more expensive.

Measured (the model is loaded once, as a query server would; each query opens the index afresh):

* fast mode end to end: open the index (manifest + memory maps), encode and embed the query, one
  matrix product over the 100k memory-mapped embeddings, ``argpartition``, gather the candidates'
  codes, re-rank them with the LM, read the captions of the hits. Median of ``--queries`` queries
  (the first, with cold caches, is reported apart).
* exact mode: regions scored per second by the LM (the paper's method), over ``--exact-regions``.

Headline: ``seconds`` = the median fast query; the peer is the 1 s target, ``ratio = seconds / 1``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from typing import Dict

import numpy as np
import torch

logger = logging.getLogger(__name__)

TARGET_SECONDS = 1.0
QUERIES = ["a red circle", "a small striped blue square left of a green star", "a large hexagon",
           "a yellow triangle", "a purple diamond above a red star", "an orange circle", "a dotted green square"]


def add_arguments(parser) -> None:
    parser.add_argument("--regions", type=int, default=100_000)
    parser.add_argument("--regions-per-image", type=int, default=100)
    parser.add_argument("--region-dim", type=int, default=4096)
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--lm-hidden", type=int, default=256)
    parser.add_argument("--lm-vocab", type=int, default=64)
    parser.add_argument("--vg-lm", action="store_true", help="also time a Visual-Genome-size LM (512 hidden, 10.5k words)")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--topk", type=int, default=20)
    parser.add_argument("--queries", type=int, default=7)
    parser.add_argument("--exact-regions", type=int, default=20_000, help="regions scored to measure exact mode's rate")
    parser.add_argument("--workdir", default="", help="keep/reuse the synthetic index here (default: temp dir, removed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: robust on a shared 2-core machine; 0 = torch's default)")


def clustered_embeddings(n: int, dim: int, *, clusters: int, seed: int = 0, noise: float = 1.0, noise_seed=None,
                         start: int = 0) -> np.ndarray:
    """float32 (n, dim) synthetic joint embeddings, L2-normalised: ``clusters`` random unit "concepts"
    (drawn from ``seed``), each vector its concept plus isotropic Gaussian noise of norm ~``noise``
    (cosine to its concept ~0.7 at noise 1), i.e. regions whose captions say nearly the same thing
    lie together, as they do in a trained joint embedding. Vector i uses concept
    ``hash(start + i) % clusters``; ``noise_seed`` (default: from ``seed`` and ``start``) draws the
    noise, so queries are new vectors of the same concepts."""
    centers = np.random.default_rng(seed).standard_normal((clusters, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    rng = np.random.default_rng(noise_seed if noise_seed is not None else [seed, start, 1])
    assign = (np.arange(start, start + n, dtype=np.int64) * 2654435761) % clusters
    x = centers[assign] + rng.standard_normal((n, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _vocab(n: int):
    from densecap.data.tokenizer import Vocabulary

    words = sorted({w for q in QUERIES for w in q.split()})
    words += [f"w{i}" for i in range(max(0, n - 4 - len(words)))]
    return Vocabulary(words)


def _model(vocab, region_dim: int, hidden: int, embed_dim: int, seed: int):
    from densecap.modeling.language_model import LSTMCaptionDecoder
    from densecap.retrieval.embedding import EmbeddingHead

    torch.manual_seed(seed)
    m = torch.nn.Module()
    m.vocab = vocab
    m.caption_head = LSTMCaptionDecoder(vocab_size=len(vocab), input_dim=region_dim, embed_size=hidden, hidden_size=hidden)
    m.embedding_head = EmbeddingHead(vocab_size=len(vocab), region_dim=region_dim, embed_dim=embed_dim)
    return m.eval()


def _build_index(root: str, rmodel, args) -> float:
    from densecap.retrieval.index import ImageRecord, RegionIndex

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    idx = RegionIndex.create(root, checkpoint=rmodel.checkpoint, region_dim=args.region_dim, embed_dim=args.embed_dim,
                             codes_dtype="float16", options={"benchmark": True})
    idx.lock()
    per = args.regions_per_image
    n_img = (args.regions + per - 1) // per
    shard, done = [], 0
    for i in range(n_img):
        n = min(per, args.regions - done)
        codes = np.maximum(rng.standard_normal((n, args.region_dim), dtype=np.float32), 0)  # ReLU'd like fc7
        xy = rng.integers(0, 600, (n, 2))
        wh = rng.integers(20, 300, (n, 2))
        shard.append(ImageRecord(path=f"/bench/{i:06d}.jpg", width=900, height=900,
                                 boxes=np.concatenate([xy, wh], 1).astype(np.float32),
                                 scores=np.sort(rng.random(n, dtype=np.float32))[::-1].copy(),
                                 captions=[f"region {done + k}" for k in range(n)], codes=codes,
                                 embeddings=rmodel.embed_regions(codes)))
        done += n
        if len(shard) == 200 or i == n_img - 1:
            idx.add_shard(shard)
            shard = []
    idx.unlock()
    return time.perf_counter() - t0


def _time_queries(root: str, rmodel, args) -> Dict:
    from densecap.retrieval.index import RegionIndex
    from densecap.retrieval.search import search_text

    times, parts = [], []
    for q in range(args.queries):
        t0 = time.perf_counter()
        index = RegionIndex.open(root)
        t_open = time.perf_counter() - t0
        res = search_text(index, rmodel, QUERIES[q % len(QUERIES)], topk=args.topk, mode="fast", candidates=args.candidates)
        times.append(time.perf_counter() - t0)
        parts.append(dict(res.seconds, open=t_open))
    warm = times[1:] or times
    # exact mode's rate on a prefix of the index
    index = RegionIndex.open(root)
    ids = rmodel.encode_query(QUERIES[0])["ids"]
    n = min(args.exact_regions, index.num_regions)
    t0 = time.perf_counter()
    scored = 0
    for _, shard in index.iter_shards():
        take = min(shard.num_regions, n - scored)
        if take <= 0:
            break
        rmodel.score_codes(shard.codes[:take], ids)
        scored += take
    rate = scored / (time.perf_counter() - t0)
    full_exact_estimate = index.num_regions / rate
    return {
        "fast_seconds_median": statistics.median(warm),
        "fast_seconds_first": times[0],
        "fast_seconds_max": max(warm),
        "fast_breakdown_median": {k: statistics.median(p.get(k, 0.0) for p in parts[1:] or parts)
                                  for k in ("open", "candidates", "rerank", "format")},
        "exact_regions_per_second": rate,
        "exact_seconds_full_index_estimate": full_exact_estimate,
    }


def run(args) -> Dict:
    from densecap.retrieval.search import RetrievalModel

    if args.threads > 0:  # this benchmark process only (see /work/notes/perf_findings.md: 1 thread under load)
        torch.set_num_threads(args.threads)
    tmp = None
    work = args.workdir
    if not work:
        tmp = work = tempfile.mkdtemp(prefix="densecap_retrieve_bench_")
    try:
        vocab = _vocab(args.lm_vocab)
        ident = {"path": "benchmark", "sha256": f"bench-{args.region_dim}-{args.embed_dim}-{args.seed}"}
        model = _model(vocab, args.region_dim, args.lm_hidden, args.embed_dim, args.seed)
        rmodel = RetrievalModel(model, checkpoint=ident, region_dim=args.region_dim)
        root = os.path.join(work, f"index_{args.regions}_{args.region_dim}")
        marker = os.path.join(root, "bench.json")
        build_seconds = None
        if not os.path.exists(marker):
            shutil.rmtree(root, ignore_errors=True)
            build_seconds = _build_index(root, rmodel, args)
            with open(marker, "w") as f:
                json.dump({"build_seconds": build_seconds}, f)
        else:
            with open(marker) as f:
                build_seconds = json.load(f)["build_seconds"]
        small = _time_queries(root, rmodel, args)
        out: Dict = {
            "task": "retrieve",
            "regions": args.regions,
            "region_dim": args.region_dim,
            "embed_dim": args.embed_dim,
            "candidates": args.candidates,
            "threads": torch.get_num_threads(),
            "lm": {"hidden": args.lm_hidden, "vocab": len(vocab)},
            "index_build_seconds": build_seconds,
            **small,
            "seconds": small["fast_seconds_median"],
            "peer_seconds": TARGET_SECONDS,
            "ratio": small["fast_seconds_median"] / TARGET_SECONDS,
        }
        if args.vg_lm:
            vg_vocab = _vocab(10_500)
            vg_model = _model(vg_vocab, args.region_dim, 512, args.embed_dim, args.seed)
            vg_model.embedding_head = model.embedding_head  # the index's embeddings stay valid
            vg = RetrievalModel(vg_model, checkpoint=ident, region_dim=args.region_dim)
            a = argparse_copy(args, exact_regions=min(args.exact_regions, 5000), queries=max(3, args.queries // 2))
            out["vg_lm"] = {"hidden": 512, "vocab": len(vg_vocab), **_time_queries(root, vg, a)}
            per_region = 1.0 / out["vg_lm"]["exact_regions_per_second"]
            fixed = out["vg_lm"]["fast_seconds_median"] - args.candidates * per_region
            out["vg_lm"]["candidates_within_1s"] = int(max(0.0, (TARGET_SECONDS - fixed) / per_region))
        _print(out)
        return out
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def argparse_copy(args, **changes):
    import argparse

    d = dict(vars(args))
    d.update(changes)
    return argparse.Namespace(**d)


def _print(o: Dict) -> None:
    print(f"retrieve: {o['regions']} regions, codes {o['region_dim']}-d float16, embeddings {o['embed_dim']}-d, "
          f"{o['candidates']} candidates re-ranked")
    rows = [("demo-size LM", o)] + ([("VG-size LM", o["vg_lm"])] if "vg_lm" in o else [])
    print(f"{'':<14}{'fast median s':>15}{'fast first s':>14}{'exact regions/s':>17}{'exact full s':>14}")
    for name, r in rows:
        print(f"{name:<14}{r['fast_seconds_median']:>15.3f}{r['fast_seconds_first']:>14.3f}"
              f"{r['exact_regions_per_second']:>17.0f}{r['exact_seconds_full_index_estimate']:>14.1f}")
    print(f"target 1 s: ratio {o['ratio']:.3f}")
