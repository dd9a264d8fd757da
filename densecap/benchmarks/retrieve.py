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

The FAISS fast stage at scale (``--ann-regions 100000,1000000``; ``--ann-only`` skips the end-to-end
part above): synthetic joint embeddings (:func:`clustered_embeddings`, ``--embed-dim``, one concept
per 100 regions; queries are new draws of the same concepts) built through :mod:`densecap.retrieval.ann` as a collection of that size would be
(``choose_params``' type, nlist, nprobe; trained, built in parts of 250k regions, merged), against the
exact flat scan (one matrix product over all embeddings, the fast stage of a small index). Reported
per size: build seconds, median single-query latency of both, recall@10 of the FAISS top 10 against
the exact top 10 over ``--ann-queries`` queries, and a sweep of nprobe at the largest size.

``--simulate 10000000``: an IVF-PQ index of 10M regions made without encoding 10M vectors. The
IVF-PQ index of the largest measured size N is trained and built for real, then merged into one index
10M / N times with shifted ids (``merge_from``), so the inverted lists hold 10M entries of real codes
(list lengths, memory and scanned bytes of a 10M index; content repeated). Its query latency is
measured; its build time is extrapolated as training + (10M / N) x the measured encoding time of N;
its recall is not measured (the copies make it meaningless). The nlist is the one of the N-sized
collection, not the larger one a 10M build would choose, so the simulated lists are longer than a
real 10M index's and the latency is an upper bound. With ``--ann-only`` the headline is the FAISS
query at the largest size: ``seconds`` and ``ratio`` = seconds / exact flat scan seconds.
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
    parser.add_argument("--ann-regions", default="", help="comma-separated collection sizes for the FAISS stage "
                        "(e.g. 100000,1000000; empty: skip)")
    parser.add_argument("--ann-queries", type=int, default=100)
    parser.add_argument("--ann-only", action="store_true", help="only the FAISS part (no region index / LM)")
    parser.add_argument("--simulate", type=int, default=0, help="also a simulated IVF-PQ index of this many regions")
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
    from densecap.data.tokenizer import NUM_SPECIAL, Vocabulary

    words = sorted({w for q in QUERIES for w in q.split()})
    words += [f"w{i}" for i in range(max(0, n - NUM_SPECIAL - len(words)))]
    return Vocabulary(words)


def _model(vocab, region_dim: int, hidden: int, embed_dim: int, seed: int):
    from densecap.modeling.language_model import LSTMCaptionDecoder
    from densecap.modeling.embedding import EmbeddingHead

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


REGIONS_PER_CONCEPT = 100
ANN_PART = 250_000


def _concepts(n: int) -> int:
    return max(1, n // REGIONS_PER_CONCEPT)


def _gen(n: int, dim: int, seed: int, chunk: int = 250_000) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        out[a:b] = clustered_embeddings(b - a, dim, clusters=_concepts(n), seed=seed, start=a)
    return out


def _exact_topk(x: np.ndarray, q: np.ndarray, k: int, chunk: int = 250_000) -> np.ndarray:
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for a in range(0, len(x), chunk):
        block = q @ x[a : a + chunk].T  # Q n
        ids = np.broadcast_to(np.arange(a, a + block.shape[1]), block.shape)
        s, i = np.concatenate([best_s, block], 1), np.concatenate([best_i, ids], 1)
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, part, 1), np.take_along_axis(i, part, 1)
    return best_i


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def _median_latency(fn, queries: np.ndarray, repeat: int) -> float:
    times = []
    for q in queries[:repeat]:
        t0 = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _build(params: Dict, x: np.ndarray, seed: int) -> Dict:
    from densecap.retrieval import ann

    t0 = time.perf_counter()
    n = len(x)
    rng = np.random.default_rng(seed)
    train_n = min(n, max(64 * params["nlist"], 16_384 if params["type"] == "ivf_pq" else 0))
    trained = ann.train_ann(params, x[np.sort(rng.choice(n, train_n, replace=False))], seed=seed)
    t_train = time.perf_counter() - t0
    parts = [ann.build_part(trained, x[a : a + ANN_PART], np.arange(a, min(n, a + ANN_PART))) for a in range(0, n, ANN_PART)]
    t_encode = time.perf_counter() - t0 - t_train
    merged = ann.merge_parts(trained, parts)
    return {"index": ann.AnnIndex(merged, params), "trained": trained, "train_seconds": t_train,
            "encode_seconds": t_encode, "build_seconds": time.perf_counter() - t0}


def run_ann(args) -> Dict:
    import faiss

    from densecap.retrieval import ann

    faiss.omp_set_num_threads(max(1, args.threads))
    sizes = [int(v) for v in args.ann_regions.split(",") if v.strip()]
    dim, k = args.embed_dim, 10
    rows = []
    x = None
    for n in sizes:
        x = _gen(n, dim, args.seed)
        queries = clustered_embeddings(args.ann_queries, dim, clusters=_concepts(n), seed=args.seed, noise_seed=12345)
        truth = _exact_topk(x, queries, k)
        flat_s = _median_latency(lambda q: np.argpartition(-(x @ q), k - 1)[:k], queries, 15)
        params = ann.choose_params(n, dim, kind="ivf_flat" if n < ann.PQ_MIN else "auto")
        b = _build(params, x, args.seed)
        ix = b["index"]
        found = ix.search(queries, k)[1]
        row = {"regions": n, "type": params["type"], "factory": params["factory"], "nlist": params["nlist"],
               "nprobe": params["nprobe"], "auto_type": ann.choose_params(n, dim)["type"],
               "build_seconds": b["build_seconds"], "train_seconds": b["train_seconds"], "encode_seconds": b["encode_seconds"],
               "query_seconds": _median_latency(lambda q: ix.search(q[None], k), queries, 30),
               "flat_query_seconds": flat_s, "recall@10": _recall(found, truth)}
        row["ratio"] = row["query_seconds"] / flat_s
        if n == sizes[-1]:
            sweep = []
            for probe in (1, 4, 16, 32, 64, 128, 256, 512):
                if probe > params["nlist"]:
                    break
                ix.set_nprobe(probe)
                wide = ix.search(queries, 1000)[1]
                sweep.append({"nprobe": probe, "recall@10": _recall(ix.search(queries, k)[1], truth),
                              "recall@10_in_100": _recall(wide[:, :100], truth),
                              "recall@10_in_1000": _recall(wide, truth),
                              "query_seconds": _median_latency(lambda q: ix.search(q[None], k), queries, 30)})
            ix.set_nprobe(params["nprobe"])
            row["nprobe_sweep"] = sweep
            ok = [s["nprobe"] for s in sweep if s["recall@10"] >= 0.95]
            row["min_nprobe_for_recall_0.95"] = ok[0] if ok else None
            ok = [s["nprobe"] for s in sweep if s["recall@10_in_1000"] >= 0.95]
            row["min_nprobe_for_recall_0.95_in_1000_candidates"] = ok[0] if ok else None
        rows.append(row)
        print(f"ann {n}: {row['factory']} nprobe {row['nprobe']}: build {row['build_seconds']:.1f} s, query "
              f"{row['query_seconds'] * 1e3:.2f} ms vs flat {flat_s * 1e3:.1f} ms, recall@10 {row['recall@10']:.3f}", flush=True)
        del b, ix
    out: Dict = {"embed_dim": dim, "queries": args.ann_queries, "regions_per_concept": REGIONS_PER_CONCEPT, "faiss_threads": max(1, args.threads),
                 "sizes": rows, "load_average": list(os.getloadavg())}
    if args.simulate and x is not None:
        n = len(x)
        params = ann.choose_params(n, dim, kind="ivf_pq")
        b = _build(params, x, args.seed)
        pq = b["index"]
        truth = _exact_topk(x, queries, k)
        real = {"regions": n, "recall@10_of_100_candidates": _recall(pq.search(queries, 100)[1], truth),
                "recall@10": _recall(pq.search(queries, k)[1], truth)}
        copies = int(np.ceil(args.simulate / n))
        t0 = time.perf_counter()
        big = faiss.clone_index(b["trained"])
        for c in range(copies):
            big.merge_from(faiss.clone_index(pq.index), c * n)
        t_rep = time.perf_counter() - t0
        sim = ann.AnnIndex(big, params)
        out["simulated"] = {"regions": int(big.ntotal), "factory": params["factory"], "nlist": params["nlist"],
                            "nprobe": params["nprobe"], "pq_m": params["pq_m"], "copies_of": n,
                            "query_seconds": _median_latency(lambda q: sim.search(q[None], k), queries, 30),
                            "query_seconds_100_candidates": _median_latency(lambda q: sim.search(q[None], 100), queries, 30),
                            "build_seconds_extrapolated": b["train_seconds"] + copies * b["encode_seconds"],
                            "replicate_seconds": t_rep, "code_bytes_per_region": params["pq_m"],
                            "memory_gb": big.ntotal * (params["pq_m"] + 8) / 1e9,
                            "measured_at_source_size": real}
        print(f"simulated {big.ntotal}: {params['factory']} query {out['simulated']['query_seconds'] * 1e3:.2f} ms, "
              f"build ~{out['simulated']['build_seconds_extrapolated']:.0f} s (extrapolated)", flush=True)
    return out


def run(args) -> Dict:
    from densecap.retrieval.search import RetrievalModel

    if args.threads > 0:  # this benchmark process only (one thread is fastest on a loaded machine)
        torch.set_num_threads(args.threads)
    if args.ann_only:
        res = run_ann(args)
        last = res["sizes"][-1]
        res.update(task="retrieve", seconds=last["query_seconds"], peer_seconds=last["flat_query_seconds"], ratio=last["ratio"])
        return res
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
        if args.ann_regions:
            out["ann"] = run_ann(args)
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
