"""The FAISS fast stage of the region index: recall against the exact scan, parts built apart and
merged, appending without a rebuild, memory-mapped loading, the parameters in the manifest."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from densecap.benchmarks.retrieve import clustered_embeddings  # noqa: E402
from densecap.retrieval import ann  # noqa: E402
from densecap.retrieval.index import ImageRecord, RegionIndex  # noqa: E402

N, E, PER_IMAGE = 20_000, 32, 100


@pytest.fixture(autouse=True)
def _one_thread():
    faiss.omp_set_num_threads(1)


def _vectors(n=N, seed=0):
    return clustered_embeddings(n, E, clusters=200, seed=seed)


def _write(index, vecs, start, shard_images=50):
    index.lock()
    recs = []
    for a in range(0, len(vecs), PER_IMAGE):
        v = vecs[a : a + PER_IMAGE]
        n = len(v)
        recs.append(ImageRecord(path=f"/synthetic/{start + a:07d}.jpg", width=10, height=10,
                                boxes=np.ones((n, 4), np.float32), scores=np.ones(n, np.float32),
                                captions=[f"r{start + a + i}" for i in range(n)], codes=np.zeros((n, 2), np.float32),
                                embeddings=v))
        if len(recs) == shard_images:
            index.add_shard(recs)
            recs = []
    if recs:
        index.add_shard(recs)
    index.unlock()


def _index(tmp_path, vecs, name="idx"):
    idx = RegionIndex.create(str(tmp_path / name), checkpoint={"path": "x", "sha256": "s"}, region_dim=2, embed_dim=E,
                             codes_dtype="float32")
    _write(idx, vecs, 0)
    return RegionIndex.open(str(tmp_path / name))


def _exact_top(vecs, q, k):
    return np.argsort(-(vecs @ q), kind="stable")[:k]


def test_choose_params_by_size():
    assert ann.choose_params(50_000, 256)["type"] == "flat"
    p = ann.choose_params(1_000_000, 256)
    assert (p["type"], p["factory"], p["nlist"], p["nprobe"]) == ("ivf_flat", "IVF1024,Flat", 1024, 256)
    p = ann.choose_params(50_000_000, 256)
    assert (p["type"], p["factory"], p["pq_m"]) == ("ivf_pq", "IVF8192,PQ32", 32)
    with pytest.raises(ValueError, match="must be one of"):
        ann.choose_params(10, 8, kind="hnsw")


def test_recall_against_flat_and_metadata_round_trip(tmp_path):
    vecs = _vectors()
    index = _index(tmp_path, vecs)
    queries = clustered_embeddings(40, E, clusters=200, seed=0, noise_seed=99)
    # the flat fast stage is the exact scan
    with index:
        index.lock()
        p = ann.build_ann(index, kind="flat")
    assert p["type"] == "flat" and index.ann() is None
    ids, sims = ann.fast_candidates(index, queries[0], 10)
    assert sorted(ids.tolist()) == sorted(_exact_top(vecs, queries[0], 10).tolist())
    np.testing.assert_allclose(sims, vecs[ids] @ queries[0], rtol=1e-5)
    # IVF-Flat: recall@10 of the exact top 10
    with index:
        index.lock()
        p = ann.build_ann(index, kind="ivf_flat", nlist=64, nprobe=16)
    hit = 0
    for q in queries:
        ids, sims = ann.fast_candidates(index, q, 10)
        assert np.all(np.diff(ids) > 0)  # ascending, no duplicates
        np.testing.assert_allclose(sims, vecs[ids] @ q, rtol=1e-4, atol=1e-5)  # IVF-Flat similarities are exact
        hit += len(set(ids.tolist()) & set(_exact_top(vecs, q, 10).tolist()))
    recall = hit / (10 * len(queries))
    assert recall >= 0.95, recall
    # a single list probed finds clearly fewer: the parameter is honoured
    low = sum(len(set(ann.fast_candidates(index, q, 10, nprobe=1)[0].tolist()) & set(_exact_top(vecs, q, 10).tolist()))
              for q in queries) / (10 * len(queries))
    assert low < recall
    # the parameters are in the manifest and come back on reopening
    with open(os.path.join(index.root, "manifest.json")) as f:
        on_disk = json.load(f)["ann"]
    for key, value in {"type": "ivf_flat", "factory": "IVF64,Flat", "metric": "inner_product", "dim": E,
                       "count": N, "nlist": 64, "nprobe": 16, "file": f"ivf_{N}.faiss"}.items():
        assert on_disk[key] == value, key
    again = RegionIndex.open(index.root)
    assert again.ann_params == p
    assert again.ann().count == N and faiss.extract_index_ivf(again.ann().index).nprobe == 16
    assert sorted(os.listdir(os.path.join(index.root, "ann"))) == sorted([p["file"], p["trained"]])


def test_parts_built_apart_and_merged_equal_one_build(tmp_path):
    vecs = _vectors()
    params = ann.choose_params(N, E, kind="ivf_flat", nlist=64, nprobe=8)
    trained = ann.train_ann(params, vecs[::4])
    single = ann.build_part(trained, vecs, np.arange(N))
    cuts = [0, 3000, 11_000, 11_001, N]
    parts = [ann.build_part(trained, vecs[a:b], np.arange(a, b)) for a, b in zip(cuts[:-1], cuts[1:])]
    merged = ann.merge_parts(trained, parts)
    assert merged.ntotal == N
    queries = clustered_embeddings(20, E, clusters=200, seed=0, noise_seed=7)
    for ix in (single, merged):
        faiss.extract_index_ivf(ix).nprobe = 8
    d1, i1 = single.search(queries, 10)
    d2, i2 = merged.search(queries, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    # the same through the index: build_ann in small parts equals one part
    index = _index(tmp_path, vecs)
    with index:
        index.lock()
        ann.build_ann(index, kind="ivf_flat", nlist=64, nprobe=8, part_regions=N)
        a = [ann.fast_candidates(index, q, 10) for q in queries]
        ann.build_ann(index, kind="ivf_flat", nlist=64, nprobe=8, part_regions=3333)
        b = [ann.fast_candidates(index, q, 10) for q in queries]
    for (ia, sa), (ib, sb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(sa, sb)


def test_append_without_rebuild(tmp_path):
    vecs = _vectors()
    first = 15_000
    index = _index(tmp_path, vecs[:first])
    with index:
        index.lock()
        p = ann.build_ann(index, kind="ivf_flat", nlist=64, nprobe=16)
    trained_path = os.path.join(index.root, "ann", p["trained"])
    trained_mtime = os.stat(trained_path).st_mtime_ns
    _write(index, vecs[first:], first)
    index = RegionIndex.open(index.root)
    assert index.num_regions == N and index.ann_params["count"] == first
    # before the update the appended regions are scanned exactly: a query equal to one of them finds it
    target = 19_321
    ids, _ = ann.fast_candidates(index, vecs[target], 5)
    assert target in ids.tolist()
    with index:
        index.lock()
        assert ann.update_ann(index) == N - first
        assert ann.update_ann(index) == 0
    index = RegionIndex.open(index.root)
    p2 = index.ann_params
    assert p2["count"] == N and p2["trained"] == p["trained"] and p2["file"] == f"ivf_{N}.faiss"
    assert os.stat(trained_path).st_mtime_ns == trained_mtime  # not retrained
    assert sorted(os.listdir(os.path.join(index.root, "ann"))) == sorted([p2["file"], p2["trained"]])
    # the appended index equals one built at once on the same quantizer
    trained = faiss.read_index(trained_path)
    ref = ann.build_part(trained, vecs, np.arange(N))
    faiss.extract_index_ivf(ref).nprobe = 16
    queries = clustered_embeddings(10, E, clusters=200, seed=0, noise_seed=5)
    _, want = ref.search(queries, 10)
    for q, w in zip(queries, want):
        assert ann.fast_candidates(index, q, 10)[0].tolist() == sorted(w.tolist())
    assert target in ann.fast_candidates(index, vecs[target], 5)[0].tolist()


def test_memory_mapped_load(tmp_path):
    vecs = _vectors()
    index = _index(tmp_path, vecs)
    with index:
        index.lock()
        p = ann.build_ann(index, kind="ivf_flat", nlist=64, nprobe=16)
    mm = ann.open_ann(index.root, p, mmap=True)
    full = ann.open_ann(index.root, p, mmap=False)
    ivf = faiss.extract_index_ivf(mm.index)
    assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
    assert not isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(full.index).invlists),
                          faiss.OnDiskInvertedLists)
    q = clustered_embeddings(5, E, clusters=200, seed=0, noise_seed=3)
    d1, i1 = mm.search(q, 10)
    d2, i2 = full.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    # the flat vectors are memory-mapped too
    assert isinstance(RegionIndex.open(index.root).shards[0].embeddings, np.memmap)
    # a listed file that went missing is a clear error
    os.remove(os.path.join(index.root, "ann", p["file"]))
    with pytest.raises(FileNotFoundError, match="missing; rebuild it"):
        RegionIndex.open(index.root).ann()


def test_ivf_pq_builds_and_finds_neighbours(tmp_path):
    vecs = _vectors()
    index = _index(tmp_path, vecs)
    with index:
        index.lock()
        p = ann.build_ann(index, kind="ivf_pq", nlist=32, nprobe=8, pq_m=8, train_size=4096)
    assert p["factory"] == "IVF32,PQ8" and RegionIndex.open(index.root).ann().count == N
    queries = clustered_embeddings(20, E, clusters=200, seed=0, noise_seed=11)
    # 100 candidates from the compressed codes hold most of the exact top 10 (the LM re-ranks them)
    hit = sum(len(set(ann.fast_candidates(index, q, 100)[0].tolist()) & set(_exact_top(vecs, q, 10).tolist()))
              for q in queries)
    assert hit / (10 * len(queries)) >= 0.8  # 100 random candidates of 20k would hold 0.5%


def test_search_text_through_the_cli_built_stage(tmp_path):
    from test_retrieval import _planted_index

    from densecap.retrieval.cli import main
    from densecap.retrieval.search import search_text

    index, rm = _planted_index(tmp_path)
    flat = search_text(index, rm, "a red circle", topk=4, mode="fast", candidates=100)
    assert main(["ann", "--index", index.root, "--type", "ivf_flat", "--nlist", "2", "--nprobe", "2"]) == 0
    index = RegionIndex.open(index.root)
    assert index.ann_params["type"] == "ivf_flat" and index.ann().count == 9
    fast = search_text(index, rm, "a red circle", topk=4, mode="fast", candidates=100)
    assert [(h["id"], h["score"]) for h in fast.hits] == [(h["id"], h["score"]) for h in flat.hits]
    for a, b in zip(fast.hits, flat.hits):
        assert a["similarity"] == pytest.approx(b["similarity"], abs=1e-5)
    assert main(["ann", "--index", index.root, "--update"]) == 0
