"""Region retrieval: ranking loss, embedding head, index safety, search, eval metrics,
clustering, CLI. Uses a tiny random real DenseCap model (small_cnn) and a bag-of-words fake that
honours the model contract where exact values must be known."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from densecap.data.tokenizer import Vocabulary, tokenize
from densecap.retrieval import EmbeddingHead, ranking_loss, same_caption_mask
from densecap.retrieval.cluster import kmeans
from densecap.retrieval.evaluate import _best_per_image, iou_fractions, ranking_metrics, source_ranks, source_ranks_lex
from densecap.retrieval.index import (
    CheckpointMismatchError, ImageRecord, RegionIndex, checkpoint_identity, index_images,
)
from densecap.retrieval.search import RetrievalModel, search_by_region, search_text

WORDS = "a red blue green circle square star small large left of".split()


# ------------------------------------------------------------------------------------------
# ranking loss and the embedding head
# ------------------------------------------------------------------------------------------
S_HAND = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.75], [0.6, 0.3, 0.4]])


def test_ranking_loss_hand_computed():
    # margin 0.2; worked on paper (rows regions, columns sentences):
    # k=0: every hinge negative -> 0
    # k=1: sentence l=2: 0.75-0.8+0.2 = 0.15; the rest negative           -> 0.15
    # k=2: sentence l=0: 0.6-0.4+0.2 = 0.4, l=1: 0.3-0.4+0.2 = 0.1;
    #      region   l=0: 0.1-0.4+0.2 < 0,   l=1: 0.75-0.4+0.2 = 0.55      -> 1.05
    assert ranking_loss(S_HAND, 0.2, reduction="sum").item() == pytest.approx(1.2, abs=1e-6)
    assert ranking_loss(S_HAND, 0.2).item() == pytest.approx(0.4, abs=1e-6)  # mean over K = 3
    # captions 1 and 2 identical: their mutual terms (0.15, 0.1, 0.55) are not negatives
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[1, 2] = mask[2, 1] = True
    assert ranking_loss(S_HAND, 0.2, positive_mask=mask, reduction="sum").item() == pytest.approx(0.4, abs=1e-6)
    # margin 1 (the paper's): by hand 0+0.5+0.1+0+0.8+0.3+0.2+0+0.7+0.6+0.9+1.0+1.35+0.4+0 ...
    s = S_HAND
    want = sum(max(0, s[k, l] - s[k, k] + 1) + max(0, s[l, k] - s[k, k] + 1) for k in range(3) for l in range(3) if l != k)
    assert ranking_loss(S_HAND, 1.0, reduction="sum").item() == pytest.approx(float(want), abs=1e-5)
    assert ranking_loss(torch.zeros(0, 0), 0.2).item() == 0.0


def test_same_caption_mask():
    caps = torch.tensor([[4, 5, 0], [4, 6, 0], [4, 5, 0], [4, 5, 7]])
    m = same_caption_mask(caps)
    assert m.tolist() == [[True, False, True, False], [False, True, False, False],
                          [True, False, True, False], [False, False, False, True]]


def test_embedding_head_learns_and_api():
    torch.manual_seed(0)
    vocab = Vocabulary(WORDS)
    phrases = ["a red circle", "a blue square", "a green star", "a small red square", "a large blue circle", "a green circle"]
    caps = torch.zeros(len(phrases), 5, dtype=torch.long)
    for i, p in enumerate(phrases):
        ids = vocab.encode(tokenize(p))
        caps[i, : len(ids)] = torch.tensor(ids)
    proto = torch.randn(len(phrases), 24)
    head = EmbeddingHead(vocab_size=len(vocab), region_dim=24, embed_dim=16, word_size=16, hidden_size=16, margin=0.2)
    opt = torch.optim.Adam(head.parameters(), lr=2e-2)
    first = None
    for it in range(50):
        idx = torch.randint(len(phrases), (12,))
        codes = proto[idx] + 0.1 * torch.randn(12, 24)
        loss = head(codes, caps[idx])["loss_embed"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.2 * first
    r = head.embed_regions(proto)
    s = head.embed_sentences(caps)
    assert torch.allclose(r.norm(dim=1), torch.ones(len(phrases)), atol=1e-5)
    assert torch.allclose(s.norm(dim=1), torch.ones(len(phrases)), atol=1e-5)
    assert ((r @ s.t()).argmax(1) == torch.arange(len(phrases))).all()
    # padding does not change a sentence's embedding (packed bidirectional RNN)
    padded = torch.cat([caps, torch.zeros(len(phrases), 7, dtype=torch.long)], dim=1)
    assert torch.allclose(head.embed_sentences(padded), s, atol=1e-5)
    # detached by default: no gradient reaches the region codes
    codes = proto.clone().requires_grad_(True)
    head(codes, caps)["loss_embed"].backward()
    assert codes.grad is None
    # fewer than 2 pairs: zero, differentiable
    z = head(proto[:1], caps[:1])["loss_embed"]
    assert z.item() == 0.0 and z.requires_grad


def test_train_only_freezes(tmp_path):
    from densecap.config import get_cfg
    from densecap.engine.build import build_optimizer

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(0.5))
            self.caption_head = nn.Linear(2, 2)
            self.embedding_head = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))

    cfg = get_cfg()
    cfg.MODEL.TRAIN_ONLY = ["embedding_head"]
    m = M()
    opt = build_optimizer(cfg, m)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"embedding_head.0.weight", "embedding_head.0.bias"}
    assert sum(len(g["params"]) for g in opt.param_groups) == 2
    # frozen modules' BatchNorm and dropout stay in eval mode (no statistics drift, no dropout);
    # the modules themselves follow train() (the RPN computes something else in training)
    m.train()
    assert m.backbone.training and not m.backbone[1].training and not m.backbone[2].training
    assert m.embedding_head[1].training  # the trained module's dropout trains
    m.eval()
    assert not m.embedding_head[1].training
    m.train()
    assert not m.backbone[1].training
    assert "backbone.0.weight" in m.state_dict()


# ------------------------------------------------------------------------------------------
# a bag-of-words fake honouring the contract (exact values known)
# ------------------------------------------------------------------------------------------
class BowLM(nn.Module):
    """score = -||code - bag_of_words(caption)||^2 (max 0 for the planted code)."""

    def __init__(self, v):
        super().__init__()
        self.v = v
        self.dummy = nn.Parameter(torch.zeros(1))

    def bow(self, captions):
        b = F.one_hot(captions.long(), self.v).sum(1).float()
        b[:, 0] = 0
        return b

    def score(self, codes, captions):
        return -((codes.float() - self.bow(captions)) ** 2).sum(1)


class BowEmbed(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.region_dim = self.embed_dim = v
        self.lm = BowLM(v)

    def embed_regions(self, codes):
        return F.normalize(codes.float(), dim=1)

    def embed_sentences(self, captions):
        return F.normalize(self.lm.bow(captions), dim=1)


class FakeModel(nn.Module):
    capabilities = frozenset({"regions", "region_embeddings"})

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.caption_head = BowLM(len(vocab))
        self.embedding_head = BowEmbed(len(vocab))


def _bow(vocab, phrase):
    b = np.zeros(len(vocab), np.float32)
    for i in vocab.encode(tokenize(phrase)):
        b[i] += 1
    return b


PLANTED = [  # image, captions of its regions
    ("img0.jpg", ["a red square", "a blue circle", "a green star"]),
    ("img1.jpg", ["a small red circle", "a red star"]),
    ("img2.jpg", ["a blue square", "a red circle", "a large green circle"]),  # the planted hit: id 6
    ("img3.jpg", ["a green square"]),
]


def _planted_index(tmp_path, codes_dtype="float32", shard_size=2):
    vocab = Vocabulary(WORDS)
    ck = tmp_path / "a.pth"
    ck.write_bytes(b"checkpoint A")
    ident = checkpoint_identity(str(ck))
    rm = RetrievalModel(FakeModel(vocab), checkpoint=ident, region_dim=len(vocab), chunk_size=2)
    idx = RegionIndex.create(str(tmp_path / "idx"), checkpoint=ident, region_dim=len(vocab), embed_dim=len(vocab),
                             codes_dtype=codes_dtype)
    idx.lock()
    recs = []
    for name, caps in PLANTED:
        codes = np.stack([_bow(vocab, c) for c in caps])
        recs.append(ImageRecord(path=str(tmp_path / name), width=100, height=80,
                                boxes=np.array([[i * 10, 5, 20, 30] for i in range(len(caps))], np.float32),
                                scores=np.linspace(0.9, 0.5, len(caps)).astype(np.float32), captions=caps, codes=codes,
                                embeddings=rm.embed_regions(codes)))
    for a in range(0, len(recs), shard_size):
        idx.add_shard(recs[a : a + shard_size])
    idx.unlock()
    return RegionIndex.open(str(tmp_path / "idx")), rm


def test_query_planted_exact_and_fast(tmp_path):
    index, rm = _planted_index(tmp_path)
    assert index.num_images == 4 and index.num_regions == 9 and len(index.shards) == 2
    res = search_text(index, rm, "A red circle!", topk=4, mode="exact")
    assert [h["id"] for h in res.hits][:1] == [6]
    assert res.hits[0]["caption"] == "a red circle" and res.hits[0]["image"].endswith("img2.jpg")
    assert res.hits[0]["box"] == [10.0, 5.0, 20.0, 30.0]
    assert res.hits[0]["score"] == pytest.approx(0.0)
    # the next ones differ by one word (score -1) or two (-2); scores descending, ties by id
    assert [h["score"] for h in res.hits] == [0.0, -1.0, -2.0, -2.0]
    assert [h["id"] for h in res.hits][1:] == [3, 0, 1]
    # chunking does not change anything
    rm.chunk_size = 1000
    assert [h["id"] for h in search_text(index, rm, "a red circle", topk=4).hits] == [6, 3, 0, 1]
    # fast: few candidates still find the planted region; all candidates = exact
    fast = search_text(index, rm, "a red circle", topk=4, mode="fast", candidates=2)
    assert fast.hits[0]["id"] == 6 and fast.candidates == 4  # at least topk candidates
    full = search_text(index, rm, "a red circle", topk=4, mode="fast", candidates=100)
    assert [h["id"] for h in full.hits] == [6, 3, 0, 1]
    assert all(-1 <= h["similarity"] <= 1 for h in full.hits)
    assert res.to_json()[0] == {"image": str(tmp_path / "img2.jpg"), "box": [10.0, 5.0, 20.0, 30.0], "score": 0.0,
                                "caption": "a red circle"}
    # region query: the stored code of region 6 is nearest to itself
    r = search_by_region(index, rm, "img", [0, 0, 1, 1], topk=3, code=index.gather_codes(np.array([6]))[0])
    assert r.hits[0]["id"] == 6 and r.hits[0]["score"] == pytest.approx(1.0)


def test_compact_merges_shards(tmp_path):
    from densecap.retrieval.cli import main

    index, rm = _planted_index(tmp_path, shard_size=1)
    assert len(index.shards) == 4
    before = search_text(index, rm, "a red circle", topk=9)
    assert main(["compact", "--index", index.root]) == 0
    merged = RegionIndex.open(index.root)
    assert len(merged.shards) == 1 and merged.num_images == 4 and merged.num_regions == 9
    assert os.listdir(os.path.join(index.root, "shards")) == [merged.shards[0].name]
    after = search_text(merged, rm, "a red circle", topk=9)
    assert [(h["id"], h["image"], h["box"], h["caption"], h["score"]) for h in after.hits] == \
        [(h["id"], h["image"], h["box"], h["caption"], h["score"]) for h in before.hits]
    np.testing.assert_array_equal(merged.gather_embeddings(np.arange(9)), index.gather_embeddings(np.arange(9)))
    assert [im["path"] for _, im in merged.images()] == [im["path"] for _, im in index.images()]
    # appending after a compaction continues with fresh shard names
    merged.lock()
    merged.add_shard([ImageRecord(path="/x/new.jpg", width=1, height=1, boxes=np.ones((1, 4), np.float32),
                                  scores=np.ones(1, np.float32), captions=["a star"],
                                  codes=np.zeros((1, merged.region_dim), np.float32),
                                  embeddings=np.zeros((1, merged.embed_dim), np.float32))])
    assert len(RegionIndex.open(index.root).shards) == 2 and RegionIndex.open(index.root).num_regions == 10


@pytest.mark.parametrize("decoder,every_step", [("lstm", False), ("gru", False), ("lstm", True)])
def test_score_captions_prefix_tree_equals_score(decoder, every_step):
    from densecap.modeling.language_model import GRUCaptionDecoder, LSTMCaptionDecoder

    vocab = Vocabulary(WORDS)
    torch.manual_seed(1)
    cls = LSTMCaptionDecoder if decoder == "lstm" else GRUCaptionDecoder
    head = cls(vocab_size=len(vocab), input_dim=12, embed_size=8, hidden_size=8, code_every_step=every_step).eval()
    model = nn.Module()
    model.vocab, model.caption_head = vocab, head
    rm = RetrievalModel(model, checkpoint={"path": "p", "sha256": "s"}, region_dim=12, chunk_size=7)
    phrases = ["a red circle", "a red", "a red circle left of a blue square", "a red", "blue", "a small star"]
    caps = rm.encode_captions(phrases)
    codes = np.abs(np.random.default_rng(0).standard_normal((23, 12))).astype(np.float32)
    got = rm.score_captions(codes, caps)
    assert rm._stepper.usable and rm._stepper.checked
    with torch.no_grad():
        want = np.stack([head.score(torch.from_numpy(codes), caps[i : i + 1].expand(23, -1)).numpy() for i in range(6)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm.score_codes(codes, caps[2:3]), want[2], rtol=1e-5, atol=1e-5)
    # a decoder without the recurrent internals or a step interface: plain score()
    fake = RetrievalModel(FakeModel(vocab), checkpoint={"path": "p", "sha256": "s"}, region_dim=len(vocab))
    ids = fake.encode_captions(["a red circle", "a blue square"])
    codes = np.stack([_bow(fake.vocab, "a red circle"), _bow(fake.vocab, "a blue star")])
    np.testing.assert_allclose(fake.score_captions(codes, ids), [[0, -4], [-4, -2]])
    assert not fake._stepper.usable


def test_oov_reported(tmp_path, capsys):
    from densecap.retrieval.cli import print_result

    index, rm = _planted_index(tmp_path)
    res = search_text(index, rm, "a red zebra circle", topk=2)
    assert res.oov == ["zebra"] and res.tokens == ["a", "red", "<UNK>", "circle"]
    print_result(res)
    assert "not in the vocabulary, searched as <UNK>: zebra" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no words"):
        search_text(index, rm, " ?! ", topk=2)


def test_model_mismatch_error(tmp_path):
    index, rm = _planted_index(tmp_path)
    other = tmp_path / "b.pth"
    other.write_bytes(b"checkpoint B")
    rm_b = RetrievalModel(rm.model, checkpoint=checkpoint_identity(str(other)), region_dim=rm.region_dim)
    with pytest.raises(CheckpointMismatchError, match=r"model mismatch.*a\.pth.*b\.pth"):
        search_text(index, rm_b, "a red circle")
    with pytest.raises(CheckpointMismatchError):
        index.check_checkpoint(str(other))
    index.check_checkpoint(str(tmp_path / "a.pth"))  # the right one passes
    # the recorded file changed in place: its hash no longer matches
    time.sleep(0.01)
    (tmp_path / "a.pth").write_bytes(b"checkpoint A, retrained")
    with pytest.raises(CheckpointMismatchError, match="model mismatch"):
        index.check_checkpoint()


def test_float16_codes_close(tmp_path):
    index, rm = _planted_index(tmp_path, codes_dtype="float16")
    assert index.shards[0].codes.dtype == np.float16
    assert [h["id"] for h in search_text(index, rm, "a red circle", topk=4).hits] == [6, 3, 0, 1]


# ------------------------------------------------------------------------------------------
# crash safety
# ------------------------------------------------------------------------------------------
def _rec(i, n=3, d=4):
    return ImageRecord(path=f"/x/{i}.jpg", width=10, height=10, boxes=np.ones((n, 4), np.float32),
                       scores=np.ones(n, np.float32), captions=[f"c{i}"] * n, codes=np.full((n, d), i, np.float32))


def test_crash_between_shard_and_manifest(tmp_path, monkeypatch):
    root = str(tmp_path / "idx")
    idx = RegionIndex.create(root, checkpoint={"path": "p", "sha256": "s"}, region_dim=4, embed_dim=0)
    idx.lock()
    idx.add_shard([_rec(0), _rec(1)])

    def boom(self, manifest):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(RegionIndex, "_write_manifest", boom)
    with pytest.raises(KeyboardInterrupt):
        idx.add_shard([_rec(2)])  # shard renamed into place, manifest never updated
    monkeypatch.undo()
    idx.unlock()
    assert os.path.isdir(os.path.join(root, "shards", "shard_000001"))  # the orphan is on disk
    again = RegionIndex.open(root)  # ... and ignored by readers
    assert again.num_images == 2 and again.num_regions == 6 and again.done_paths() == {"/x/0.jpg", "/x/1.jpg"}
    # a half-written shard of another crashed writer
    tmpdir = os.path.join(root, "shards", ".tmp-shard_000001-12345")
    os.makedirs(tmpdir)
    with open(os.path.join(tmpdir, "codes.npy"), "wb") as f:
        f.write(b"\x93NUMPY\x01\x00trunc")
    assert RegionIndex.open(root).num_regions == 6
    # the next writer removes both leftovers and appends cleanly
    again.lock()
    assert sorted(os.listdir(os.path.join(root, "shards"))) == ["shard_000000"]
    again.add_shard([_rec(2), _rec(3)])
    again.unlock()
    final = RegionIndex.open(root)
    assert final.num_images == 4 and final.num_regions == 12
    assert final.gather_codes(np.array([0, 5, 6, 11]))[:, 0].tolist() == [0, 1, 2, 3]


def test_crash_inside_shard_write(tmp_path, monkeypatch):
    import densecap.retrieval.index as mod

    root = str(tmp_path / "idx")
    idx = RegionIndex.create(root, checkpoint={"path": "p", "sha256": "s"}, region_dim=4, embed_dim=0)
    idx.lock()
    idx.add_shard([_rec(0)])
    real = mod._save_npy

    def partial(path, arr):
        if path.endswith("codes.npy"):
            with open(path, "wb") as f:
                f.write(b"\x93NUMPY partial")
            raise OSError("disk full")
        real(path, arr)

    monkeypatch.setattr(mod, "_save_npy", partial)
    with pytest.raises(OSError):
        idx.add_shard([_rec(1)])
    monkeypatch.undo()
    assert sorted(os.listdir(os.path.join(root, "shards"))) == ["shard_000000"]
    assert RegionIndex.open(root).num_images == 1
    idx.add_shard([_rec(1)])
    assert RegionIndex.open(root).num_images == 2


@pytest.mark.slow
def test_sigkill_during_writes_leaves_valid_index(tmp_path):
    root = str(tmp_path / "idx")
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from densecap.retrieval.index import RegionIndex, ImageRecord
        idx = RegionIndex.create({root!r}, checkpoint={{"path": "p", "sha256": "s"}}, region_dim=64, embed_dim=0)
        idx.lock()
        i = 0
        print("ready", flush=True)
        while True:
            recs = [ImageRecord(path=f"/x/{{i}}_{{j}}.jpg", width=1, height=1, boxes=np.ones((50, 4), np.float32),
                                scores=np.ones(50, np.float32), captions=["c"] * 50, codes=np.full((50, 64), i, np.float32))
                    for j in range(20)]
            idx.add_shard(recs)
            i += 1
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"ready"
    time.sleep(1.0)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    index = RegionIndex.open(root)
    assert len(index.shards) >= 1
    assert index.num_regions == 1000 * len(index.shards) == index.manifest["num_regions"]
    for k, (off, s) in enumerate(index.iter_shards()):
        assert np.all(np.asarray(s.codes[:, 0]) == k) and len(s.captions) == s.num_regions


# ------------------------------------------------------------------------------------------
# the tiny real model: index build, incremental add, CLI, clustering
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import cv2

    from densecap.config import get_cfg
    from densecap.engine.checkpoint import save_checkpoint
    from densecap.inference.predictor import DenseCapPredictor
    from densecap.modeling import build_model

    d = tmp_path_factory.mktemp("tiny")
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "small_cnn"
    cfg.MODEL.BACKBONE.WIDTH = 8
    cfg.MODEL.ROI.FC_DIM = 32
    cfg.MODEL.CAPTION.EMBED_SIZE = 16
    cfg.MODEL.CAPTION.HIDDEN_SIZE = 16
    cfg.MODEL.CAPTION.MAX_TOKENS = 5
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 30
    cfg.INPUT.MAX_SIZE = 96
    cfg.MODEL.EMBEDDING.ENABLED = True
    cfg.MODEL.EMBEDDING.DIM = 8
    cfg.MODEL.EMBEDDING.WORD_SIZE = 8
    cfg.MODEL.EMBEDDING.HIDDEN_SIZE = 8
    vocab = Vocabulary(WORDS)
    torch.manual_seed(0)
    model = build_model(cfg, vocab).eval()
    assert model.embedding_head is not None  # MODEL.EMBEDDING.ENABLED builds the head
    ck = str(d / "model.pth")
    save_checkpoint(ck, model=model, cfg=cfg, vocab=vocab, iteration=0)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        img = np.full((72, 96, 3), 90, np.uint8)
        x, y = int(rng.integers(5, 50)), int(rng.integers(5, 30))
        img[y : y + 30, x : x + 30] = rng.integers(0, 255, 3)
        p = str(d / f"im{i}.png")
        cv2.imwrite(p, img)
        paths.append(p)
    rm = RetrievalModel(model, checkpoint=checkpoint_identity(ck), predictor=DenseCapPredictor(model, image_size=96),
                        region_dim=32)
    return {"dir": d, "ckpt": ck, "paths": paths, "rm": rm, "model": model}


def test_index_build_incremental(tiny, tmp_path):
    rm, paths = tiny["rm"], tiny["paths"]
    root = str(tmp_path / "idx")
    s1 = index_images(rm, paths[:4], root, batch_size=2, shard_images=2, progress=False)
    assert s1["added_images"] == 4 and s1["skipped_images"] == 0
    idx = RegionIndex.open(root)
    assert idx.num_images == 4 and len(idx.shards) == 2 and idx.has_embeddings and idx.region_dim == 32
    n4 = idx.num_regions
    assert n4 > 0
    s2 = index_images(rm, paths + [str(tmp_path / "missing.png")], root, batch_size=2, shard_images=2, progress=False)
    assert s2["added_images"] == 2 and s2["skipped_images"] == 4 and len(s2["errors"]) == 1
    idx = RegionIndex.open(root)
    assert idx.num_images == 6 and idx.done_paths() == {os.path.abspath(p) for p in paths}
    # stored values are the model's: codes (float16) and embeddings of image 0's regions
    pred = rm.predictor.predict_paths([paths[0]])[0]
    first = idx.shards[0]
    n0 = first.images[0]["count"]
    assert n0 == len(pred.captions) and first.captions[:n0] == pred.captions
    np.testing.assert_allclose(np.asarray(first.boxes[:n0]), pred.boxes, atol=1e-3)
    np.testing.assert_allclose(np.asarray(first.codes[:n0], np.float32), pred.region_codes, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(np.asarray(first.embeddings[:n0]), rm.embed_regions(pred.region_codes), atol=1e-5)
    # exact scores equal the LM's log-likelihood of the query given the stored code
    res = search_text(idx, rm, "a red circle", topk=5)
    ids = np.array([h["id"] for h in res.hits])
    direct = rm.caption_head.score(torch.from_numpy(idx.gather_codes(ids)), rm.encode_query("a red circle")["ids"].expand(len(ids), -1))
    np.testing.assert_allclose([h["score"] for h in res.hits], direct.detach().numpy(), rtol=1e-5, atol=1e-5)
    all_scores = rm.score_codes(idx.gather_codes(np.arange(idx.num_regions)), rm.encode_query("a red circle")["ids"])
    assert res.hits[0]["score"] == pytest.approx(float(all_scores.max()), abs=1e-5)
    # fast mode with every region as a candidate equals exact mode
    fast = search_text(idx, rm, "a red circle", topk=5, mode="fast", candidates=10 ** 6)
    assert [h["id"] for h in fast.hits] == [h["id"] for h in res.hits]
    # region query through the model (given box)
    code = rm.region_code(paths[0], [10, 10, 30, 30])
    assert code.shape == (32,)


def test_cli_index_query_json_and_cluster(tiny, tmp_path, capsys):
    from densecap.retrieval.cli import cluster_main, main

    root = str(tmp_path / "idx")
    assert main(["index", "--weights", tiny["ckpt"], "--input", str(tiny["dir"] / "*.png"), "--index", root]) == 0
    assert "6 images" in capsys.readouterr().out
    out_json = str(tmp_path / "hits.json")
    assert RegionIndex.open(root).has_embeddings  # the checkpoint's embedding head is used
    mode = "fast"
    assert main(["query", "--index", root, "--query", "a red circle", "--topk", "3", "--mode", mode, "--json", out_json,
                 "--output", str(tmp_path / "sheet")]) == 0
    hits = json.load(open(out_json))
    assert len(hits) == 3 and set(hits[0]) == {"image", "box", "score", "caption"}
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert os.path.getsize(tmp_path / "sheet" / "hits.jpg") > 1000
    other = tmp_path / "other.pth"
    other.write_bytes(open(tiny["ckpt"], "rb").read() + b"x")
    assert main(["query", "--index", root, "--query", "a red circle", "--weights", str(other)]) == 1
    assert "model mismatch" in capsys.readouterr().err
    assert cluster_main(["--index", root, "--k", "2", "--output", str(tmp_path / "cl")]) == 0
    summary = json.load(open(tmp_path / "cl" / "clusters.json"))
    assert len(summary["assignment"]) == 6 and sum(c["size"] for c in summary["clusters"]) == 6
    assert os.path.isfile(tmp_path / "cl" / "cluster_000.jpg")




@pytest.fixture(scope="module")
def tiny_split(tiny, tmp_path_factory):
    """A prepared dataset over the tiny images: 3-5 GT regions each, train = test."""
    from densecap.data.prepared import write_split

    tmp_path = tmp_path_factory.mktemp("split")
    vocab = tiny["rm"].vocab
    vocab.save(str(tmp_path / "vocab.json"))
    phrases = ["a red circle", "a blue square", "a green star", "a small red square", "a large blue circle"]
    caps, boxes, counts = [], [], []
    for i, _ in enumerate(tiny["paths"]):
        n = 3 + i % 3
        counts.append(n)
        for k in range(n):
            ids = vocab.encode(tokenize(phrases[(i + k) % 5]))
            caps.append(ids + [0] * (5 - len(ids)))
            boxes.append([5 * k, 5, 30, 30])
    caps = np.array(caps, np.int32)
    for split in ("train", "test"):
        write_split(str(tmp_path), split, image_ids=list(range(6)), image_paths=tiny["paths"], heights=[72] * 6,
                    widths=[96] * 6, region_counts=counts, region_ids=np.arange(len(caps)),
                    boxes=np.array(boxes, np.float32), captions=caps, caption_lengths=(caps != 0).sum(1).astype(np.int16))
    return tmp_path


def test_eval_protocol_on_tiny_split(tiny, tiny_split):
    from densecap.retrieval.evaluate import evaluate_retrieval, format_metrics

    tmp_path = tiny_split
    m = evaluate_retrieval(tiny["rm"], str(tmp_path), "test", num_images=1000, num_queries=100, candidates=10 ** 6, seed=3)
    assert m["num_images"] == 6 and m["num_queries"] == 6 and m["captions_per_query"] == 4
    for mode in ("exact", "fast", "random"):
        r = m[mode]
        assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] == 1.0  # 6 images: the source is always in the top 10
        assert 1 <= r["median_rank"] <= 6 and 0 <= r["IoU>0.5"] <= r["IoU>0.3"] <= r["IoU>0.1"] <= 1
    # every region a candidate: fast mode ranks exactly like exact mode and agrees on the top k
    assert m["fast"]["ranks"] == m["exact"]["ranks"]
    assert m["fast_vs_exact"]["recall@10"] == 1.0
    assert m["random"]["expected"]["median_rank"] == 3.5
    m2 = evaluate_retrieval(tiny["rm"], str(tmp_path), "test", num_queries=3, candidates=10 ** 6, seed=3)
    assert m2["num_queries"] == 3
    assert "R@1" in format_metrics(m)


def test_train_embedding_second_stage(tiny, tiny_split, tmp_path):
    from densecap.engine.checkpoint import cfg_from_checkpoint, load_checkpoint
    from densecap.retrieval.cli import main

    out = str(tmp_path / "with_embedding.pth")
    assert main(["train-embedding", "--weights", tiny["ckpt"], "--data", str(tiny_split), "--output", out,
                 "--steps", "60", "--batch-size", "16", "--lr", "0.01"]) == 0
    before, after = load_checkpoint(tiny["ckpt"])["model"], load_checkpoint(out)["model"]
    for k, v in before.items():  # the DenseCap weights are untouched, the head is new
        if k.startswith("embedding_head."):
            assert not torch.equal(v, after[k])
        else:
            assert torch.equal(v, after[k]), k
    assert cfg_from_checkpoint(load_checkpoint(out)).MODEL.EMBEDDING.ENABLED
    hist = load_checkpoint(out)["extra"]["embedding"]
    assert hist["pairs"] == 24 and hist["steps"] == 60
    rm = RetrievalModel.from_checkpoint(out)
    assert rm.embedding_head is not None and rm.embed_dim == 8
    # the extracted pairs are cached next to the output and reused by a re-run
    assert os.path.isfile(out + ".pairs.npz")
    from densecap.retrieval.train import train_embedding

    again = train_embedding(tiny["ckpt"], str(tiny_split), str(tmp_path / "again.pth"), steps=5, batch_size=8)
    assert again["pairs"] == 24
    os.replace(out + ".pairs.npz", str(tmp_path / "again.pth.pairs.npz"))
    assert train_embedding(tiny["ckpt"], str(tiny_split), str(tmp_path / "again.pth"), steps=5)["extract_seconds"] < 1.0


# ------------------------------------------------------------------------------------------
# evaluation metrics and clustering
# ------------------------------------------------------------------------------------------
def test_eval_metrics_hand_made():
    scores = np.array([
        [0.9, 0.1, 0.5, 0.2],  # source 0 -> rank 1
        [0.9, 0.1, 0.5, 0.2],  # source 2 -> rank 2
        [0.3, 0.3, 0.3, 0.1],  # source 1, tied with 0 and 2 -> 1 + 0 + 2/2 = 2
        [-np.inf, 0.0, 1.0, 2.0],  # source 0 -> rank 4
    ])
    ranks = source_ranks(scores, np.array([0, 2, 1, 0]))
    assert ranks.tolist() == [1.0, 2.0, 2.0, 4.0]
    m = ranking_metrics(ranks, ks=(1, 2, 3))
    assert m == {"R@1": 0.25, "R@2": 0.75, "R@3": 0.75, "median_rank": 2.0}
    assert iou_fractions([0.05, 0.2, 0.35, 0.6]) == {"IoU>0.1": 0.75, "IoU>0.3": 0.5, "IoU>0.5": 0.25}
    # lexicographic: more captions found beats a better mean
    prim = np.array([[4.0, 3.0, 4.0]])
    sec = np.array([[-5.0, -1.0, -2.0]])
    assert source_ranks_lex(prim, sec, np.array([0])).tolist() == [2.0]
    # best box per image, with an image that has no regions
    vals = np.array([[1.0, 3.0, 2.0, 0.5], [0.0, -1.0, 5.0, 4.0]])
    best, arg = _best_per_image(vals, np.array([0, 2, 2]), np.array([2, 0, 2]))
    assert best.tolist() == [[3.0, -np.inf, 2.0], [0.0, -np.inf, 5.0]]
    assert arg.tolist() == [[1, -1, 2], [0, -1, 2]]


def test_kmeans_separable():
    rng = np.random.default_rng(1)
    centers = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    truth = np.repeat(np.arange(3), 40)
    x = centers[truth] + 0.3 * rng.standard_normal((120, 3))
    labels, c, inertia = kmeans(x, 3, seed=0)
    for j in range(3):  # every found cluster is exactly one true blob
        assert len(set(truth[labels == j])) == 1 and (labels == j).sum() == 40
    labels2, _, inertia2 = kmeans(x, 3, seed=0)
    assert (labels2 == labels).all() and inertia2 == inertia
    with pytest.raises(ValueError):
        kmeans(x[:2], 3)


def test_train_only_embedding_head_through_the_trainer(tiny_cfg):
    """configs/synthetic/embedding_small.yaml's path: the trainer with MODEL.TRAIN_ONLY on a DenseCap
    model. The frozen RPN still samples training boxes (it follows train()), only the head changes."""
    from densecap.engine.trainer import Trainer

    tiny_cfg.MODEL.EMBEDDING.ENABLED = True
    tiny_cfg.MODEL.EMBEDDING.DIM = 16
    tiny_cfg.MODEL.EMBEDDING.WORD_SIZE = 16
    tiny_cfg.MODEL.EMBEDDING.HIDDEN_SIZE = 16
    tiny_cfg.MODEL.TRAIN_ONLY = ["embedding_head"]
    tiny_cfg.SOLVER.MAX_ITER = 2
    tiny_cfg.DATASETS.TEST = ()
    trainer = Trainer(tiny_cfg)
    model = getattr(trainer.model, "module", trainer.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])}
    assert changed == {"embedding_head"}
