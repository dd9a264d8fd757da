"""Joint region-sentence embedding (Karpathy & Fei-Fei 2015, "Deep Visual-Semantic Alignments").

P: (region, caption) pairs, N: regions, Q: sentences, T: tokens, D: region code size,
W: word-embedding size, H: RNN hidden size (per direction), E: joint embedding size.

* Regions: ``v = W_m code + b_m`` (a linear map of the recognition network's region code).
* Sentences: word embeddings -> a bidirectional RNN (GRU or LSTM) -> per word
  ``s_t = W_d (h_t^fwd + h_t^bwd) + b_d`` (the paper's form; its ReLU is dropped because the vector
  is L2-normalised next and a ReLU would confine sentences to the positive orthant) -> the mean over
  the words. With one region the paper's image-sentence score ``sum_t max_i v_i . s_t`` is exactly
  ``v . sum_t s_t``, so the sentence vector is the (length-normalised) sum of its word vectors.
* Both are L2-normalised; the score is their dot product (cosine), in [-1, 1].
* Trained with the bidirectional max-margin ranking loss (:func:`densecap.modeling.ranking_loss.ranking_loss`)
  over the pairs of a batch; pairs with identical captions are not negatives of each other.

The vocabulary is the captioner's (:class:`densecap.data.tokenizer.Vocabulary`); captions are the
same 0-padded token rows (no START/END) the dataset gives the caption LM. The word embedding is the
head's own (so the ranking loss can never move the captioner); :meth:`EmbeddingHead.init_word_embedding`
copies the LM's vectors in for a warm start.
"""
from __future__ import annotations

import logging
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from densecap.data.tokenizer import PAD, Vocabulary

from .ranking_loss import ranking_loss, same_caption_mask

logger = logging.getLogger(__name__)

__all__ = ["SentenceEncoder", "EmbeddingHead", "build_embedding_head"]


class SentenceEncoder(nn.Module):
    """Bidirectional RNN sentence encoder: (Q, T) 0-padded tokens -> (Q, E) un-normalised."""

    def __init__(self, *, vocab_size: int, word_size: int, hidden_size: int, embed_dim: int, rnn: str = "gru") -> None:
        super().__init__()
        rnn = rnn.lower()
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"MODEL.EMBEDDING.RNN must be 'gru' or 'lstm', got {rnn!r}")
        self.word_embed = nn.Embedding(vocab_size, word_size, padding_idx=PAD)
        cls = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = cls(word_size, hidden_size, num_layers=1, batch_first=True, bidirectional=True)
        self.hidden_size = hidden_size
        self.proj = nn.Linear(hidden_size, embed_dim)

    def forward(self, captions: Tensor) -> Tensor:
        q, t = captions.shape
        if q == 0:
            return captions.new_zeros((0, self.proj.out_features), dtype=torch.float32)
        lengths = (captions != PAD).sum(dim=1).clamp(min=1)  # Q
        x = self.word_embed(captions)  # Q T W
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=t)  # Q T 2H (zeros past the end)
        h = h[..., : self.hidden_size] + h[..., self.hidden_size :]  # Q T H: h_fwd + h_bwd
        s = self.proj(h)  # Q T E: per-word vectors
        valid = (torch.arange(t, device=captions.device)[None, :] < lengths[:, None]).to(s.dtype)  # Q T
        return (s * valid[..., None]).sum(dim=1) / lengths[:, None].to(s.dtype)  # Q E


class EmbeddingHead(nn.Module):
    """The joint embedding as an optional head of the DenseCap model.

    Inputs/outputs (see the module docstring for shapes)::

        head(region_codes (P, D), captions (P, T) int64 0-padded) -> {"loss_embed": weighted scalar}
        head.embed_regions(region_codes (N, D)) -> (N, E) float, L2-normalised
        head.embed_sentences(captions (Q, T))    -> (Q, E) float, L2-normalised
        head.similarity(region_codes, captions)  -> (N, Q) cosine scores
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        region_dim: int,
        embed_dim: int = 256,
        word_size: int = 256,
        hidden_size: int = 256,
        rnn: str = "gru",
        margin: float = 0.2,
        loss_weight: float = 1.0,
        detach_region_codes: bool = True,
        max_pairs: int = 256,
    ) -> None:
        super().__init__()
        self.region_proj = nn.Linear(region_dim, embed_dim)
        self.sentence_encoder = SentenceEncoder(
            vocab_size=vocab_size, word_size=word_size, hidden_size=hidden_size, embed_dim=embed_dim, rnn=rnn
        )
        self.region_dim = int(region_dim)
        self.embed_dim = int(embed_dim)
        self.margin = float(margin)
        self.loss_weight = float(loss_weight)
        self.detach_region_codes = bool(detach_region_codes)
        self.max_pairs = int(max_pairs)

    @classmethod
    def from_config(cls, cfg, vocab: Vocabulary, region_dim: int) -> "EmbeddingHead":
        e = cfg.MODEL.EMBEDDING
        return cls(
            vocab_size=len(vocab),
            region_dim=int(region_dim),
            embed_dim=int(e.DIM),
            word_size=int(e.WORD_SIZE),
            hidden_size=int(e.HIDDEN_SIZE),
            rnn=str(e.RNN),
            margin=float(e.MARGIN),
            loss_weight=float(e.LOSS_WEIGHT),
            detach_region_codes=bool(e.DETACH_REGION_CODES),
            max_pairs=int(e.MAX_PAIRS),
        )

    # ---- embedding -------------------------------------------------------------------------
    def embed_regions(self, region_codes: Tensor) -> Tensor:
        if region_codes.dim() != 2 or region_codes.shape[1] != self.region_dim:
            raise ValueError(f"region codes must be (N, {self.region_dim}), got {tuple(region_codes.shape)}")
        v = self.region_proj(region_codes.to(self.region_proj.weight.dtype))  # N E
        return F.normalize(v, dim=1)

    def embed_sentences(self, captions: Tensor) -> Tensor:
        if captions.dim() != 2:
            raise ValueError(f"captions must be (Q, T) token ids, got {tuple(captions.shape)}")
        s = self.sentence_encoder(captions.long())  # Q E
        return F.normalize(s, dim=1)

    def similarity(self, region_codes: Tensor, captions: Tensor) -> Tensor:
        return self.embed_regions(region_codes) @ self.embed_sentences(captions).t()  # N Q

    @torch.no_grad()
    def init_word_embedding(self, weight: Tensor) -> None:
        """Copy word vectors (V, W') in, e.g. the caption LM's; W' must equal the head's W."""
        emb = self.sentence_encoder.word_embed.weight
        if tuple(weight.shape) != tuple(emb.shape):
            raise ValueError(f"word embedding shape {tuple(weight.shape)} != the head's {tuple(emb.shape)}")
        emb.copy_(weight)

    # ---- training --------------------------------------------------------------------------
    def forward(self, region_codes: Tensor, captions: Tensor) -> Dict[str, Tensor]:
        """Ranking loss over the pairs ``(region_codes[k], captions[k])``."""
        if region_codes.shape[0] != captions.shape[0]:
            raise ValueError(f"{region_codes.shape[0]} region codes but {captions.shape[0]} captions")
        if self.detach_region_codes:
            region_codes = region_codes.detach()
        p = region_codes.shape[0]
        if self.max_pairs > 0 and p > self.max_pairs:
            keep = torch.randperm(p, device=region_codes.device)[: self.max_pairs]
            region_codes, captions = region_codes[keep], captions[keep]
        if region_codes.shape[0] < 2:  # no negatives: a zero loss that still touches every parameter
            zero = sum(q.sum() for q in self.parameters()) * 0.0
            return {"loss_embed": zero}
        # identical captions (several positives of one GT box) are encoded once and are not negatives
        uniq, inv = torch.unique(captions, dim=0, return_inverse=True)  # U T, P
        sentences = self.embed_sentences(uniq)[inv]  # P E
        scores = self.embed_regions(region_codes) @ sentences.t()  # P P
        loss = ranking_loss(scores, self.margin, positive_mask=same_caption_mask(captions), reduction="mean")
        return {"loss_embed": loss * self.loss_weight}


def build_embedding_head(cfg, vocab: Vocabulary, region_dim: int) -> EmbeddingHead:
    return EmbeddingHead.from_config(cfg, vocab, region_dim)
