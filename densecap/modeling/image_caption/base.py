"""What every whole-image caption head shares: vocabulary, word embedding, teacher forcing,
beam-search decoding (densecap/modeling/decoding.py), scoring.

Shapes: B: images, C: feature channels, H, W: feature grid, L = H*W locations, T: caption
tokens, S = T + 1 decoding steps (the words, then END), V: vocabulary, E: embedding size,
K: beam size, N: captions returned per image.

A subclass provides the recurrent cell through three methods:

    init_state(features (B,C,H,W), valid_mask (B,H,W) bool or None) -> state
        a nest of tensors with first dimension B (it is repeated per beam by the beam search);
        it carries everything a step needs (e.g. the attention's feature grid)
    step(state, prev_tokens (B,), mode) -> (logits (B,V), state, aux)
        ``mode``: "train" (stochastic parts sample), "test" (deterministic). ``aux`` is a dict
        that may hold "alpha" (B,L), "att_logits" (B,L), "sample" (B,) int64, "hard" (B,) bool
    losses(outputs) -> dict of unweighted loss_* (the caption NLL is added by the base class)

and sets ``has_attention``. Decoding goes through ``decode_step`` (the same step protocol as the
region captioner's, :func:`densecap.modeling.decoding.generate_captions`).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densecap.data.tokenizer import END, PAD, START, Vocabulary
from densecap.modeling.decoding import generate_captions, sample_captions
from densecap.modeling.language_model import caption_targets

from .losses import caption_nll, token_logprobs

logger = logging.getLogger(__name__)


def teacher_forcing_io(captions: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Inputs, targets and step mask for 0-padded captions (B, T) without START/END.

    inputs  (B, S) = START w1 .. wT      targets (B, S) = w1 .. wn END PAD ..
    step_mask (B, S) float: 1 for the n words and the END step of every caption.
    """
    B, T = captions.shape
    captions = captions.long()
    inputs = torch.cat([torch.full((B, 1), START, dtype=torch.long, device=captions.device), captions], 1)  # B S
    targets = caption_targets(captions, END, PAD)  # B S (the region decoder's targets)
    lengths = (captions != PAD).sum(dim=1)  # B
    steps = torch.arange(T + 1, device=captions.device)[None, :]
    step_mask = (steps <= lengths[:, None]).float()  # B S
    return inputs, targets, step_mask


class ImageCaptionHead(nn.Module):
    """Base class of the whole-image caption heads (see the module docstring).

    API (the DenseCap model and the ImageCaptioner call exactly this)::

        head(features, captions, valid_mask=None) -> {"loss_*": weighted scalar}
        head.generate(features, valid_mask=None, beam_size=3, max_len=20, num_captions=1,
                      length_penalty=0.0, block_repeats=False)
            -> {"tokens": (B,N,T) int64 0-padded without START/END, "logprobs": (B,N),
                "attention": (B,T,H,W) float (the best caption's map per word) or None}
        head.score(features, captions, valid_mask=None) -> (B,) total log-likelihood incl. END
    """

    has_attention = False

    def __init__(self, *, vocab: Vocabulary, embed: nn.Embedding, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = embed
        self.loss_weight = float(loss_weight)
        never = torch.zeros(len(vocab), dtype=torch.bool)
        never[[PAD, START]] = True  # never predicted (as the region decoder)
        self.register_buffer("_never", never, persistent=False)

    def mask_logits(self, logits: Tensor) -> Tensor:
        return logits.masked_fill(self._never, float("-inf"))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ---- to implement ------------------------------------------------------------------------
    def init_state(self, features: Tensor, valid_mask: Optional[Tensor]) -> Any:
        raise NotImplementedError

    def step(self, state: Any, prev_tokens: Tensor, mode: str) -> Tuple[Tensor, Any, Dict[str, Tensor]]:
        raise NotImplementedError

    def extra_losses(self, outputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return {}

    def decode_step(self, state: Any, tokens: Tensor) -> Tuple[Tensor, Any]:
        """One test-time decoding step (the decoder step protocol of
        :mod:`densecap.modeling.decoding`): (state, tokens (B,)) -> (logprobs (B, V), new state)."""
        logits, state, _aux = self.step(state, tokens, "test")
        return F.log_softmax(logits.float(), dim=-1), state

    # ---- teacher forcing ---------------------------------------------------------------------
    def decode_teacher(self, features: Tensor, captions: Tensor, valid_mask: Optional[Tensor] = None, mode: str = "train") -> Dict[str, Tensor]:
        """Run the decoder over the ground-truth words. Returns (S = T + 1 steps)::

            logits (B,S,V), targets (B,S), step_mask (B,S) float
            and, for attention heads: alpha (B,S,L), att_logits (B,S,L), loc_mask (B,L) bool,
            grid (H, W), samples (B,S) int64 and hard (B,) bool (hard attention, training)
        """
        inputs, targets, step_mask = teacher_forcing_io(captions)
        state = self.init_state(features, valid_mask)
        logits, auxes = [], []
        for t in range(inputs.shape[1]):
            lg, state, aux = self.step(state, inputs[:, t], mode)  # B V
            logits.append(lg)
            auxes.append(aux)
        out: Dict[str, Tensor] = {"logits": torch.stack(logits, 1), "targets": targets, "step_mask": step_mask}
        for k in auxes[0] if auxes else ():
            out[k] = torch.stack([a[k] for a in auxes], 1)
        out.update(self.static_outputs(state))
        return out

    def static_outputs(self, state: Any) -> Dict[str, Any]:
        return {}

    def forward(self, features: Tensor, captions: Tensor, valid_mask: Optional[Tensor] = None,
                word_regions: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Training losses (weighted by ``loss_weight``). captions (B, T) int64, 0-padded.
        ``word_regions`` (B, T, H, W) float on the feature grid: where each word is (ground-truth
        regions; zeros for words without one), for heads that supervise their attention."""
        outputs = self.decode_teacher(features, captions, valid_mask, mode="train" if self.training else "test")
        if word_regions is not None:
            outputs["word_regions"] = word_regions
        return self.losses(outputs)

    def losses(self, outputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        n_tokens = outputs["step_mask"].sum().clamp(min=1.0)
        losses = {"loss_image_caption": caption_nll(outputs["logits"], outputs["targets"], outputs["step_mask"]).sum() / n_tokens}
        losses.update(self.extra_losses(outputs))
        return {k: v * self.loss_weight for k, v in losses.items()}

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, features: Tensor, captions: Tensor, valid_mask: Optional[Tensor] = None) -> Tensor:
        """Total log-likelihood (END included) of ``captions`` (B, T) under the deterministic decoder."""
        was = self.training
        self.eval()
        try:
            out = self.decode_teacher(features, captions, valid_mask, mode="test")
        finally:
            self.train(was)
        return token_logprobs(out["logits"], out["targets"], out["step_mask"]).sum(1)

    @torch.no_grad()
    def generate(
        self,
        features: Tensor,
        valid_mask: Optional[Tensor] = None,
        beam_size: int = 3,
        max_len: int = 20,
        num_captions: int = 1,
        length_penalty: float = 0.0,
        block_repeats: "bool | int" = False,
    ) -> Dict[str, Optional[Tensor]]:
        """Batched beam search (beam 1 = greedy).

        ``max_len``: at most that many words (MODEL.IMAGE_CAPTION.MAX_TOKENS; END not counted, as
        for the region captioner); a caption reaching it is closed with END.
        ``block_repeats``: True forbids repeating any trigram (kills word loops); an int n blocks
        repeated n-grams (1 = no word twice). ``beam_size`` is raised to ``num_captions`` if smaller.
        """
        was = self.training
        self.eval()
        try:
            B = features.shape[0]
            K = max(int(beam_size), int(num_captions))
            state0 = self.init_state(features, valid_mask)
            n_block = 3 if block_repeats is True else int(block_repeats or 0)
            tokens, logprobs = generate_captions(  # B N T, B N
                self.decode_step,
                state0,
                torch.full((B,), START, dtype=torch.long, device=features.device),
                max_tokens=int(max_len),
                end_token=END,
                pad_token=PAD,
                beam_size=K,
                length_alpha=float(length_penalty),
                num_results=int(num_captions),
                block_ngram_repeats=n_block,
            )
            # everything after the first PAD is padding (beam pads after END)
            tokens = tokens * (tokens != PAD).long().cumprod(dim=-1)
            attention = None
            if self.has_attention:
                attention = self.attention_maps(features, tokens[:, 0], valid_mask)
        finally:
            self.train(was)
        return {"tokens": tokens, "logprobs": logprobs, "attention": attention}

    def sample(
        self, features: Tensor, valid_mask: Optional[Tensor] = None, max_len: int = 20, greedy: bool = False,
        temperature: float = 1.0,
    ) -> Tuple[Tensor, Tensor]:
        """One caption per image, drawn word by word from the model (``greedy``: the argmax word),
        keeping the graph (for self-critical training; dropout follows ``self.training``, attention is
        deterministic: the expectation for hard attention).

        At most ``max_len`` words, then END (as :meth:`generate`;
        :func:`~densecap.modeling.decoding.sample_captions`). Returns tokens int64 (B, max_len)
        0-padded words without START/END and logprobs (B,): the total log-probability of the words
        and of END.
        """
        B, dev = features.shape[0], features.device

        def step(state, tokens):
            logits, state, _aux = self.step(state, tokens, "test")
            return F.log_softmax(logits.float() / float(temperature), dim=-1), state

        start = torch.full((B,), START, dtype=torch.long, device=dev)  # B
        return sample_captions(step, self.init_state(features, valid_mask), start, max_tokens=int(max_len),
                               end_token=END, pad_token=PAD, greedy=greedy)

    @torch.no_grad()
    def attention_maps(self, features: Tensor, captions: Tensor, valid_mask: Optional[Tensor] = None) -> Tensor:
        """Attention (B, T, h, w) used to emit each word of ``captions`` (B, T); 0 after the words."""
        out = self.decode_teacher(features, captions, valid_mask, mode="test")
        h, w = out["grid"]
        T = captions.shape[1]
        alpha = out["alpha"][:, :T] * (captions != PAD).unsqueeze(-1).float()  # B T L
        return alpha.reshape(alpha.shape[0], T, h, w)
