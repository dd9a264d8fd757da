"""Searching a region index: by text (exact or fast) and by an image region.

N: regions in the index, C: regions scored per chunk, K: candidates, D: region code size,
E: joint embedding size, T: query tokens.

* ``exact`` (the DenseCap paper's method): every region is scored by the language model's
  log-likelihood of the query given the region code (``caption_head.score``), C regions at a time
  (memory is bounded by C whatever N is); the best ``topk`` are kept.
* ``fast``: the query's joint embedding is compared with every region's by one matrix product
  over the memory-mapped embeddings, or, for an index with a FAISS fast stage
  (:mod:`densecap.retrieval.ann`, ``tools/retrieve.py ann``), by an IVF search; the ``candidates``
  best are re-ranked exactly. Scores reported are log-likelihoods in both modes, so they are comparable.
* relational queries ("a red star left of a green square"): with ``relational="auto"`` (the
  default) and a relation geometry model (``relations.json`` in the index directory, or given),
  a query that names a relation is grounded as a pair of regions
  (:mod:`densecap.retrieval.pairs`): its two phrases are scored in the chosen mode (exact: every
  region, the best ``PAIR_POOL`` per phrase kept; fast: the ``candidates`` nearest re-ranked; a
  region whose stored caption names the phrase is scored with that caption), the
  best pairs per image are scored with the geometry model, and the hits are the pairs' union
  boxes with their ``subject`` and ``object`` regions. ``relational="off"`` scores the whole
  query against single regions as before.
* region query: the model captions the given box (``given_boxes``), its region code is embedded
  and the nearest regions by cosine are returned (cosine of raw region codes when the model has
  no embedding head).

Query words outside the vocabulary become ``<UNK>`` (what the model was trained with) and are
reported in ``SearchResult.oov``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from densecap.data.tokenizer import UNK_TOKEN, tokenize
from densecap.modeling.capabilities import REGION_EMBEDDINGS, capabilities

from .ann import fast_candidates
from .index import ImageRecord, RegionIndex, RegionIndexError, checkpoint_identity

logger = logging.getLogger(__name__)

MODES = ("exact", "fast")
RELATIONAL = ("auto", "off")
PAIR_POOL = 20000  # exact relational search: regions kept per phrase before pairing

__all__ = ["RetrievalModel", "SearchResult", "search", "search_text", "search_by_region", "NoEmbeddingError", "MODES"]


class NoEmbeddingError(RegionIndexError):
    """Fast mode or clustering needs a joint embedding the model / index does not have."""


NO_EMBEDDING_HINT = (
    "train one on top of the checkpoint with 'tools/train_net.py --config-file configs/synthetic/embedding_small.yaml "
    "MODEL.WEIGHTS CKPT', then re-index; or use --mode exact"
)


# ------------------------------------------------------------------------------------------
# the language model, one step at a time
# ------------------------------------------------------------------------------------------
class LMStepper:
    """The caption decoder one step at a time, for scoring known captions against many regions.

    ``start(codes (C, D)) -> (state, logp (C, V))`` reads the region code and START;
    ``advance(state, token) -> (state, logp)`` feeds one word, the same word for all C regions.
    Both go through the decoder's step interface (``init_state`` / ``step``, the one beam search
    uses); ``usable`` is False for a decoder without it.
    """

    def __init__(self, head: torch.nn.Module) -> None:
        self.head = head
        self.usable = hasattr(head, "init_state") and hasattr(head, "step")
        self.checked = False

    def _device(self) -> torch.device:
        return next(self.head.parameters()).device

    def start(self, codes: torch.Tensor):
        from densecap.data.tokenizer import START

        state = self.head.init_state(codes)
        logp, state = self.head.decode_step(state, torch.full((len(codes),), START, dtype=torch.int64, device=codes.device))
        return state, logp.float()

    def advance(self, state, tok: int, n: int):
        logp, state = self.head.decode_step(state, torch.full((n,), tok, dtype=torch.int64, device=self._device()))
        return state, logp.float()


# ------------------------------------------------------------------------------------------
# the model side
# ------------------------------------------------------------------------------------------
class RetrievalModel:
    """A DenseCap model seen from retrieval: its language model, its embedding head (optional),
    a predictor to run it on images, and the identity of the checkpoint it came from.

    ``model`` honours the contract of ``densecap.modeling`` (``model.vocab``,
    ``model.caption_head.score``, eval outputs with ``region_codes``); ``model.embedding_head``
    (an :class:`~densecap.modeling.embedding.EmbeddingHead`) is used when present and not None.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        checkpoint: Dict[str, Any],
        predictor=None,
        region_dim: Optional[int] = None,
        chunk_size: int = 2048,
        logits_budget: int = 8_000_000,
    ) -> None:
        self.model = model.eval()
        self.vocab = model.vocab
        self.caption_head = model.caption_head
        self.embedding_head = model.embedding_head if REGION_EMBEDDINGS in capabilities(model) else None
        self.checkpoint = dict(checkpoint)
        self._predictor = predictor
        self.chunk_size = int(chunk_size)
        self.logits_budget = int(logits_budget)
        self._stepper: Optional["LMStepper"] = None
        if region_dim is None:
            region_dim = self.embedding_head.region_dim if self.embedding_head is not None else None
        if region_dim is None:
            cfg = getattr(model, "cfg", None)
            region_dim = int(cfg.MODEL.ROI.FC_DIM) if cfg is not None else 0
        self.region_dim = int(region_dim)

    @classmethod
    def from_checkpoint(
        cls,
        weights: str,
        *,
        config_file: Optional[str] = None,
        opts: Sequence[Any] = (),
        known: Optional[Dict[str, Any]] = None,
        **predictor_options: Any,
    ) -> "RetrievalModel":
        """Load a checkpoint with :class:`~densecap.inference.predictor.DenseCapPredictor` (its config + ``config_file``
        + ``opts`` + predictor options such as ``image_size``, ``device``)."""
        from densecap.inference.predictor import DenseCapPredictor

        ident = checkpoint_identity(weights, known=known)
        predictor = DenseCapPredictor.from_checkpoint(weights, config_file=config_file, opts=opts, **predictor_options)
        if REGION_EMBEDDINGS not in capabilities(predictor.model):
            _attach_embedding_head(predictor.model, weights, predictor.cfg)
        region_dim = None
        if predictor.cfg is not None and REGION_EMBEDDINGS not in capabilities(predictor.model):
            region_dim = int(predictor.cfg.MODEL.ROI.FC_DIM)
        return cls(predictor.model, checkpoint=ident, predictor=predictor, region_dim=region_dim)

    @property
    def predictor(self):
        if self._predictor is None:
            from densecap.inference.predictor import DenseCapPredictor

            self._predictor = DenseCapPredictor(self.model)
        return self._predictor

    @property
    def image_size(self) -> int:
        return int(getattr(self._predictor, "image_size", 0) or 0)

    @property
    def embed_dim(self) -> int:
        return int(self.embedding_head.embed_dim) if self.embedding_head is not None else 0

    @property
    def device(self) -> torch.device:
        try:
            return next(self.caption_head.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def check_index(self, index: RegionIndex) -> None:
        index.verify(self.checkpoint)

    # ---- text ------------------------------------------------------------------------------
    def encode_query(self, text: str) -> Dict[str, Any]:
        """``{"tokens": list[str] as the model sees them, "ids": int64 (1, T), "oov": list[str]}``."""
        words = tokenize(text)
        if not words:
            raise ValueError(f"the query {text!r} has no words (after lower-casing and removing punctuation)")
        oov = [w for w in words if w not in self.vocab]
        ids = torch.tensor([self.vocab.encode(words)], dtype=torch.int64)  # 1 T
        return {"tokens": self.vocab.map_unknown(words), "ids": ids, "oov": oov}

    def encode_captions(self, captions: Sequence[str]) -> torch.Tensor:
        """int64 (Q, T) 0-padded token rows of caption strings (empty captions give one <UNK>)."""
        rows = [self.vocab.encode(tokenize(c)) or [self.vocab.token_to_idx[UNK_TOKEN]] for c in captions]
        t = max((len(r) for r in rows), default=1)
        out = torch.zeros((len(rows), t), dtype=torch.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
        return out

    # ---- scoring ---------------------------------------------------------------------------
    def _chunk(self) -> int:
        """Regions scored together: the per-step (C, V) log-probabilities stay within ``logits_budget``."""
        return max(16, min(self.chunk_size, self.logits_budget // max(1, len(self.vocab))))

    @torch.inference_mode()
    def score_codes(self, codes: np.ndarray, ids: torch.Tensor) -> np.ndarray:
        """float32 (N,) log-likelihood of the query ``ids`` (1, T) given each region code (N, D):
        ``caption_head.score`` (teacher forcing, one fused recurrent pass) over chunks of regions
        small enough that the (C, T+1, V) logits stay within ``logits_budget`` elements."""
        return self._score_plain(codes, ids[:1])[0]

    @torch.inference_mode()
    def score_captions(self, codes: np.ndarray, captions: torch.Tensor) -> np.ndarray:
        """float32 (U, N): log-likelihood (END included) of each caption (U, T), 0-padded, given
        each region code (N, D) -- ``caption_head.score`` for every pair, computed faster.

        The captions form a prefix tree walked depth-first, C regions at a time: a prefix shared by
        many captions ("a small ...") is run once per region (3x fewer steps than scoring the captions
        one by one on the synthetic captions), and memory is one (C, V) step, never (C, T, V). Steps
        use :class:`LMStepper` (see there); the first chunk is checked against
        ``caption_head.score`` and a disagreement falls back to ``score`` itself.
        """
        from densecap.data.tokenizer import END, PAD

        u, n = len(captions), len(codes)
        out = np.empty((u, n), dtype=np.float32)
        if u == 0 or n == 0:
            return out
        if self._stepper is None:
            self._stepper = LMStepper(self.caption_head)
        stepper = self._stepper
        if not stepper.usable:
            return self._score_plain(codes, captions)
        trie: Dict = {}
        for i, r in enumerate(captions.tolist()):
            node = trie
            for t in r:
                if int(t) == PAD:
                    break
                node = node.setdefault(int(t), {})
            node.setdefault(None, []).append(i)  # captions ending here
        dev = self.device
        step = self._chunk()
        for a in range(0, n, step):
            c = torch.from_numpy(np.array(codes[a : a + step], dtype=np.float32)).to(dev)  # C D (a copy: memmaps are read-only)
            m = len(c)
            state, logp = stepper.start(c)  # logp C V: the first word

            def walk(node, state, logp, acc):
                for i in node.get(None, ()):
                    out[i, a : a + m] = (acc + logp[:, END]).cpu().numpy()
                for tok, child in node.items():
                    if tok is not None:
                        new_state, new_logp = stepper.advance(state, tok, m)
                        walk(child, new_state, new_logp, acc + logp[:, tok])

            walk(trie, state, logp, torch.zeros(m, device=dev))
            if not stepper.checked:
                stepper.checked = True
                k = min(4, m)
                ref = self.caption_head.score(c[:k], captions[:1].to(dev).expand(k, -1)).float().cpu().numpy()
                if not np.allclose(ref, out[0, a : a + k], rtol=1e-4, atol=1e-3):
                    logger.warning("step-wise scoring disagrees with caption_head.score (%s vs %s); using score()",
                                   out[0, a : a + k].tolist(), ref.tolist())
                    stepper.usable = False
                    return self._score_plain(codes, captions)
        return out

    def _score_chunk(self, tokens: int) -> int:
        """Regions scored together by ``caption_head.score`` for captions of ``tokens`` tokens: the
        (C, T+1, V) logits stay within ``logits_budget``."""
        return max(16, min(self.chunk_size, self.logits_budget // ((tokens + 2) * max(1, len(self.vocab)))))

    @torch.inference_mode()
    def score_rows(self, codes: np.ndarray, captions: torch.Tensor) -> np.ndarray:
        """float32 (N,): log-likelihood (END included) of caption row i (N, T), 0-padded, given
        region code i (N, D); chunks keep the (C, T+1, V) logits within ``logits_budget``."""
        out = np.empty(len(codes), dtype=np.float32)
        dev = self.device
        step = self._score_chunk(int(captions.shape[1]))
        for a in range(0, len(codes), step):
            c = torch.from_numpy(np.array(codes[a : a + step], dtype=np.float32)).to(dev)  # C D
            out[a : a + len(c)] = self.caption_head.score(c, captions[a : a + len(c)].to(dev)).float().cpu().numpy()
        return out

    @torch.inference_mode()
    def _score_plain(self, codes: np.ndarray, captions: torch.Tensor) -> np.ndarray:
        out = np.empty((len(captions), len(codes)), dtype=np.float32)
        dev = self.device
        for i in range(len(captions)):
            q = captions[i : i + 1].to(dev)
            step = self._score_chunk(int((q != 0).sum()))
            for a in range(0, len(codes), step):
                c = torch.from_numpy(np.array(codes[a : a + step], dtype=np.float32)).to(dev)  # C D
                out[i, a : a + len(c)] = self.caption_head.score(c, q.expand(len(c), -1)).float().cpu().numpy()
        return out

    def _need_embedding(self) -> None:
        if self.embedding_head is None:
            raise NoEmbeddingError(f"the checkpoint {self.checkpoint.get('path')} has no joint embedding head; {NO_EMBEDDING_HINT}")

    @torch.inference_mode()
    def embed_regions(self, codes: np.ndarray) -> np.ndarray:
        """float32 (N, E), L2-normalised."""
        self._need_embedding()
        n = len(codes)
        out = np.empty((n, self.embed_dim), dtype=np.float32)
        for a in range(0, n, self.chunk_size):
            c = torch.from_numpy(np.array(codes[a : a + self.chunk_size], dtype=np.float32)).to(self.device)
            out[a : a + len(c)] = self.embedding_head.embed_regions(c).float().cpu().numpy()
        return out

    @torch.inference_mode()
    def embed_sentences(self, ids: torch.Tensor) -> np.ndarray:
        """float32 (Q, E), L2-normalised, of token rows (Q, T)."""
        self._need_embedding()
        out = []
        for a in range(0, len(ids), self.chunk_size):
            out.append(self.embedding_head.embed_sentences(ids[a : a + self.chunk_size].to(self.device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    # ---- images ----------------------------------------------------------------------------
    def record_from_prediction(self, path: str, pred, *, max_boxes: int = 0) -> ImageRecord:
        if pred.region_codes is None:
            raise RuntimeError("the model returned no region_codes (contract: eval instances carry region_codes)")
        n = len(pred.captions) if max_boxes <= 0 else min(max_boxes, len(pred.captions))
        codes = np.asarray(pred.region_codes[:n], np.float32).reshape(n, -1)
        return ImageRecord(
            path=os.path.abspath(path),
            width=int(pred.width),
            height=int(pred.height),
            boxes=np.asarray(pred.boxes[:n], np.float32).reshape(n, 4),
            scores=np.asarray(pred.scores[:n], np.float32),
            captions=list(pred.captions[:n]),
            codes=codes,
            embeddings=self.embed_regions(codes) if self.embedding_head is not None else None,
        )

    def region_code(self, image, box) -> np.ndarray:
        """float32 (D,) region code of ``box`` [x, y, w, h] (original pixels) in an image or image path."""
        pred = self.predictor(image, given_boxes=[list(box)])
        if pred.region_codes is None or len(pred.region_codes) != 1:
            raise RuntimeError("the model returned no region code for the given box")
        return np.asarray(pred.region_codes[0], np.float32)


def _attach_embedding_head(model: torch.nn.Module, weights: str, cfg) -> None:
    """A checkpoint may hold ``embedding_head.*`` weights that the built model has no module for
    (a model class without the optional head): build the head from them and attach it."""
    from densecap.modeling.checkpoint import load_checkpoint

    from densecap.modeling.embedding import build_embedding_head

    state = load_checkpoint(weights)["model"]
    head_state = {k[len("embedding_head."):]: v for k, v in state.items() if k.startswith("embedding_head.")}
    if not head_state or cfg is None:
        return
    region_dim = int(head_state["region_proj.weight"].shape[1])
    head = build_embedding_head(cfg, model.vocab, region_dim)
    head.load_state_dict(head_state)
    model.embedding_head = head.to(next(model.parameters()).device).eval()
    logger.info("%s: joint embedding head loaded from the checkpoint", weights)


@contextlib.contextmanager
def codes_only(model: torch.nn.Module):
    """While only boxes and region codes are needed (evaluation, embedding training), let the model
    decode captions of one token (``model.max_caption_len``, an eval option of the model contract):
    caption generation is most of the inference time of a small model."""
    old = getattr(model, "max_caption_len", None)
    if old is not None:
        model.max_caption_len = 1
    try:
        yield model
    finally:
        if old is not None:
            model.max_caption_len = old


# ------------------------------------------------------------------------------------------
# searching
# ------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """``hits``: dicts ``{"rank", "id", "image", "box": [x, y, w, h], "score", "caption", ...}`` best first.

    ``score`` is the log-likelihood of the query (text modes) or the cosine similarity (region
    query); fast mode also gives each hit's embedding ``similarity``."""

    query: str
    mode: str
    hits: List[Dict[str, Any]]  # relational hits also carry "subject" / "object" regions and their scores
    tokens: List[str] = field(default_factory=list)
    oov: List[str] = field(default_factory=list)
    num_regions: int = 0
    candidates: int = 0
    seconds: Dict[str, float] = field(default_factory=dict)

    def to_json(self) -> List[Dict[str, Any]]:
        """The ``--json`` form: ``[{"image", "box", "score", "caption"}, ...]`` in rank order; a
        relational hit also has ``"subject"`` and ``"object"``: ``{"box", "caption", "score"}``."""
        out = []
        for h in self.hits:
            row = {"image": h["image"], "box": h["box"], "score": h["score"], "caption": h["caption"]}
            for part in ("subject", "object"):
                if part in h:
                    row[part] = {"box": h[part]["box"], "caption": h[part]["caption"], "score": h[f"{part}_score"]}
            out.append(row)
        return out


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple:
    """The k best (score, id), score descending, ties by id ascending."""
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        scores, ids = scores[part], ids[part]
    order = np.lexsort((ids, -scores))
    return scores[order], ids[order]


def exact_scores_topk(index: RegionIndex, rmodel: RetrievalModel, ids: torch.Tensor, topk: int):
    """Score every region of the index by the LM; returns the best (scores, region ids)."""
    best_s = np.zeros(0, np.float32)
    best_i = np.zeros(0, np.int64)
    for off, shard in index.iter_shards():
        n = shard.num_regions
        for a in range(0, n, rmodel.chunk_size):
            b = min(n, a + rmodel.chunk_size)
            ll = rmodel.score_codes(shard.codes[a:b], ids)
            best_s, best_i = _top(np.concatenate([best_s, ll]), np.concatenate([best_i, np.arange(off + a, off + b)]), topk)
    return best_s, best_i


def embedding_scores(index: RegionIndex, q: np.ndarray) -> np.ndarray:
    """float32 (N,) cosine of every region's joint embedding with ``q`` (E,)."""
    if not index.has_embeddings:
        raise NoEmbeddingError(f"index {index.root} has no joint embeddings (built with a model without an embedding head); {NO_EMBEDDING_HINT}")
    out = np.empty(index.num_regions, np.float32)
    q = np.asarray(q, np.float32).reshape(-1)
    for off, shard in index.iter_shards():
        if shard.num_regions:
            out[off : off + shard.num_regions] = shard.embeddings @ q  # N
    return out


def _hits(index: RegionIndex, ids: np.ndarray, scores: np.ndarray, extra: Optional[Dict[str, np.ndarray]] = None):
    hits = []
    for r, (i, s) in enumerate(zip(ids, scores)):
        h = index.region(int(i))
        h["score"] = float(s)
        h["rank"] = r + 1
        for k, v in (extra or {}).items():
            h[k] = float(v[r])
        hits.append(h)
    return hits


def _phrase_candidates(index: RegionIndex, rmodel: RetrievalModel, phrase: str, mode: str, candidates: int,
                       nprobe: int):
    """(region ids, log-likelihoods) of one phrase (:func:`~densecap.retrieval.pairs.score_phrase`):
    exact, the best PAIR_POOL of every region; fast, the fast stage's ``candidates`` re-ranked."""
    from .pairs import score_phrase

    if mode == "exact":
        best_s, best_i = np.zeros(0, np.float32), np.zeros(0, np.int64)
        for off, shard in index.iter_shards():
            caps = shard.captions
            for a in range(0, shard.num_regions, rmodel.chunk_size):
                b = min(shard.num_regions, a + rmodel.chunk_size)
                ll = score_phrase(rmodel, shard.codes[a:b], caps[a:b], phrase)
                best_s, best_i = _top(np.concatenate([best_s, ll]), np.concatenate([best_i, np.arange(off + a, off + b)]),
                                      PAIR_POOL)
        return best_i, best_s
    q = rmodel.embed_sentences(rmodel.encode_captions([phrase]))[0]  # E
    cand, _ = fast_candidates(index, q, int(candidates), nprobe=nprobe)
    caps = [index.region(int(i))["caption"] for i in cand]
    return cand, score_phrase(rmodel, index.gather_codes(cand), caps, phrase)


def search_relational(
    index: RegionIndex,
    rmodel: RetrievalModel,
    query: str,
    parsed: tuple,
    geometry,
    *,
    topk: int = 20,
    mode: str = "exact",
    candidates: int = 1000,
    nprobe: int = 0,
) -> SearchResult:
    """A query naming a relation, grounded as pairs of regions (module docstring). ``parsed`` is
    ``(subject, relation, object)``; ``geometry`` a :class:`~densecap.retrieval.pairs.RelationGeometry`
    or None (relation not scored)."""
    from .pairs import ground_pairs

    t0 = time.perf_counter()
    subj, rel, obj = parsed
    enc = rmodel.encode_query(query)
    if enc["oov"]:
        logger.warning("query words not in the vocabulary, searched as %s: %s", UNK_TOKEN, ", ".join(enc["oov"]))
    if mode == "fast" and not index.has_embeddings:
        raise NoEmbeddingError(f"index {index.root} has no joint embeddings (built with a model without an "
                               f"embedding head); {NO_EMBEDDING_HINT}")
    s_ids, s_ll = _phrase_candidates(index, rmodel, subj, mode, candidates, nprobe)
    o_ids, o_ll = _phrase_candidates(index, rmodel, obj, mode, candidates, nprobe)
    t1 = time.perf_counter()
    # the candidates' boxes and images, gathered once; ids are remapped to positions in them
    u = np.union1d(s_ids, o_ids)  # U
    boxes = index.gather_boxes(u).astype(np.float64)  # U 4
    image = index.gather_image_keys(u)  # U
    pos = lambda ids: np.searchsorted(u, ids)  # noqa: E731
    pairs = ground_pairs(pos(s_ids), s_ll, pos(o_ids), o_ll, boxes, image, rel, geometry, topk=max(1, int(topk)))
    hits = []
    for r, p in enumerate(pairs):
        a, b = index.region(int(u[p.subject])), index.region(int(u[p.object]))
        hits.append({
            "rank": r + 1, "id": -1, "image": a["image"], "box": [float(v) for v in p.box], "score": p.score,
            "caption": f"{a['caption']} {rel} {b['caption']}", "width": a["width"], "height": a["height"],
            "subject": a, "object": b,
            "subject_score": p.parts[0], "object_score": p.parts[1], "relation_score": p.parts[2],
        })
    seconds = {"phrases": t1 - t0, "pairs": time.perf_counter() - t1, "total": time.perf_counter() - t0}
    return SearchResult(query=query, mode=f"{mode}+pairs", hits=hits, tokens=enc["tokens"], oov=enc["oov"],
                        num_regions=index.num_regions, candidates=len(u), seconds=seconds)


def search_text(
    index: RegionIndex,
    rmodel: RetrievalModel,
    query: str,
    *,
    topk: int = 20,
    mode: str = "exact",
    candidates: int = 1000,
    nprobe: int = 0,
    relational: str = "auto",
    geometry=None,
) -> SearchResult:
    """Rank the index's regions for a text query; see the module docstring for the modes.
    ``nprobe`` > 0 overrides the FAISS fast stage's recorded ``nprobe`` (lists scanned).
    ``relational``: "auto" grounds a query naming a relation as pairs of regions when a geometry
    model is at hand (``geometry``, else the index's ``relations.json``); "off" never does."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if relational not in RELATIONAL:
        raise ValueError(f"relational must be one of {RELATIONAL}, got {relational!r}")
    rmodel.check_index(index)
    if relational == "auto":
        from .pairs import load_geometry, parse_relational

        parsed = parse_relational(query)
        if geometry is None and parsed is not None:
            geometry = load_geometry(None, index.root)
        if parsed is not None and geometry is not None:
            return search_relational(index, rmodel, query, parsed, geometry, topk=topk, mode=mode,
                                     candidates=candidates, nprobe=nprobe)
    t0 = time.perf_counter()
    enc = rmodel.encode_query(query)
    if enc["oov"]:
        logger.warning("query words not in the vocabulary, searched as %s: %s", UNK_TOKEN, ", ".join(enc["oov"]))
    topk = max(1, int(topk))
    seconds: Dict[str, float] = {}
    extra = None
    n_cand = index.num_regions
    if index.num_regions == 0:
        s, i = np.zeros(0, np.float32), np.zeros(0, np.int64)
    elif mode == "exact":
        s, i = exact_scores_topk(index, rmodel, enc["ids"], topk)
        seconds["score"] = time.perf_counter() - t0
    else:
        if not index.has_embeddings:
            raise NoEmbeddingError(f"index {index.root} has no joint embeddings (built with a model without an "
                                   f"embedding head); {NO_EMBEDDING_HINT}")
        q = rmodel.embed_sentences(enc["ids"])[0]  # E
        cand, cand_sims = fast_candidates(index, q, max(int(candidates), topk), nprobe=nprobe)  # K ascending, K
        n_cand = len(cand)
        t1 = time.perf_counter()
        seconds["candidates"] = t1 - t0
        ll = rmodel.score_codes(index.gather_codes(cand), enc["ids"])
        s, i = _top(ll, cand, topk)
        extra = {"similarity": cand_sims[np.searchsorted(cand, i)]}
        seconds["rerank"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    hits = _hits(index, i, s, extra)
    seconds["format"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    return SearchResult(query=query, mode=mode, hits=hits, tokens=enc["tokens"], oov=enc["oov"],
                        num_regions=index.num_regions, candidates=n_cand, seconds=seconds)


def search_by_region(
    index: RegionIndex, rmodel: RetrievalModel, image, box, *, topk: int = 20, code: Optional[np.ndarray] = None
) -> SearchResult:
    """Nearest regions to ``box`` [x, y, w, h] (original pixels) of ``image`` (path or RGB array)."""
    rmodel.check_index(index)
    t0 = time.perf_counter()
    code = rmodel.region_code(image, box) if code is None else np.asarray(code, np.float32)
    if index.has_embeddings and rmodel.embedding_head is not None:
        sims = embedding_scores(index, rmodel.embed_regions(code[None])[0])
    else:  # no joint embedding: cosine of the raw region codes
        logger.info("no joint embedding: nearest regions by cosine of the region codes")
        q = code / max(float(np.linalg.norm(code)), 1e-12)
        sims = np.empty(index.num_regions, np.float32)
        for off, shard in index.iter_shards():
            for a in range(0, shard.num_regions, rmodel.chunk_size):
                c = np.asarray(shard.codes[a : a + rmodel.chunk_size], np.float32)
                sims[off + a : off + a + len(c)] = (c @ q) / np.maximum(np.linalg.norm(c, axis=1), 1e-12)
    s, i = _top(sims, np.arange(len(sims)), max(1, int(topk)))
    name = image if isinstance(image, str) else "<image>"
    return SearchResult(query=f"{name} box {list(box)}", mode="region", hits=_hits(index, i, s),
                        num_regions=index.num_regions, seconds={"total": time.perf_counter() - t0})


def search(index: RegionIndex, rmodel: RetrievalModel, *, query: Optional[str] = None, image=None, box=None,
           topk: int = 20, mode: str = "exact", candidates: int = 1000, nprobe: int = 0,
           relational: str = "auto", geometry=None) -> SearchResult:
    if query is not None:
        return search_text(index, rmodel, query, topk=topk, mode=mode, candidates=candidates, nprobe=nprobe,
                           relational=relational, geometry=geometry)
    if image is None or box is None:
        raise ValueError("give a text query, or an image and a box")
    return search_by_region(index, rmodel, image, box, topk=topk)
