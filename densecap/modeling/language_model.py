"""Region caption decoders (registry ``CAPTION_DECODER_REGISTRY``: "lstm", "gru").

The original's language model: step 0 reads ``ReLU(Linear(region_code))``, step 1 reads the START
token, then the words; one recurrent layer, 512 hidden / 512 embedding by default, LSTM
forget-gate bias 1, no dropout. ``MODEL.CAPTION.CODE_EVERY_STEP`` additionally appends the
projected code to the input of every step (a direct path from the region to every word, which
grounds the words much faster when training from scratch).

Caption tensors everywhere (``gt_captions``, ``generate()`` output, ``score()`` input) hold word ids
only: int64 (N, T), left-aligned, 0-padded, no START/END. The model predicts the words and then
END, so the teacher-forced targets are ``[w_1 .. w_L, END, PAD ...]`` (T+1 long) and
``score()`` includes the END token. PAD and START are never predicted (their logits are -inf).

Shapes: N: regions, D: region code dim, T: caption tokens, V: vocabulary, E: embedding size,
H: hidden size, L: layers, K: beam size, R: results per region.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densecap.data.tokenizer import END, PAD, START, Vocabulary

from .decoding import generate_captions, tree_map
from .losses import caption_loss
from .packed_linear import PackedWeight, packed_linear
from .registry import Registry

logger = logging.getLogger(__name__)

CAPTION_DECODER_REGISTRY = Registry("CAPTION_DECODER")
CAPTION_DECODER_REGISTRY.__doc__ = """Region caption decoders (``MODEL.CAPTION.DECODER``)."""

__all__ = [
    "CAPTION_DECODER_REGISTRY",
    "CaptionDecoder",
    "LSTMCaptionDecoder",
    "GRUCaptionDecoder",
    "build_caption_decoder",
    "caption_targets",
    "load_word_vectors",
]


def caption_targets(captions: Tensor, end_token: int = END, pad_token: int = PAD) -> Tensor:
    """Teacher-forcing targets: words, then END, then PAD. (N, T) -> (N, T+1)."""
    n = captions.shape[0]
    lengths = (captions != pad_token).sum(dim=1)  # N
    targets = torch.cat([captions, captions.new_full((n, 1), pad_token)], dim=1)  # N T+1
    targets[torch.arange(n, device=captions.device), lengths] = end_token
    return targets


def load_word_vectors(path: str, vocab: Vocabulary, dim: int) -> Tuple[Tensor, Tensor]:
    """Read a GloVe / word2vec *text* file: ``word v_1 .. v_dim`` per line.

    A word2vec header line (``count dim``) is skipped. Returns (vectors float32 (V, dim),
    found bool (V,)); rows of words not in the file are zero and ``found`` False (the caller keeps
    its random initialisation there). A vector of the wrong dimension is an error.
    """
    vecs = torch.zeros(len(vocab), dim)
    found = torch.zeros(len(vocab), dtype=torch.bool)
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f):
            parts = line.rstrip().split(" ")
            if lineno == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec header
            if len(parts) < 2:
                continue
            word = parts[0]
            idx = vocab.token_to_idx.get(word)
            if idx is None or found[idx]:
                continue
            if len(parts) - 1 != dim:
                raise ValueError(
                    f"{path}:{lineno + 1}: vector of dimension {len(parts) - 1}, "
                    f"but MODEL.CAPTION.EMBED_SIZE is {dim}"
                )
            vecs[idx] = torch.tensor([float(v) for v in parts[1:]])
            found[idx] = True
    return vecs, found


class CaptionDecoder(nn.Module):
    """Recurrent caption decoder conditioned on a region (or image) code.

    forward(codes (N, D), captions (N, T)) -> logits (N, T+1, V): teacher-forced predictions of
        ``caption_targets(captions)``.
    loss(codes, captions) -> scalar: summed token cross-entropy / N.
    score(codes, captions) -> (N,): log-likelihood of each caption, END included.
    generate(codes, beam_size=1, max_len=None, ...) -> (tokens (N, T) int64, logprobs (N,)).
    """

    rnn_cls = nn.LSTM
    # greedy decoding (beam 1) by a plain argmax loop instead of the generic beam search (same
    # result, fewer ops per step, finished regions leave the batch); False = always generate_captions
    fast_greedy = True
    # recurrent weight name -> its oneDNN-packed copy, set by the test-time lever TEST.PACKED_LINEAR
    packed_rnn: Optional[Dict[str, PackedWeight]] = None

    def __init__(
        self,
        *,
        vocab_size: int,
        input_dim: int,
        embed_size: int = 512,
        hidden_size: int = 512,
        num_layers: int = 1,
        dropout: float = 0.0,
        max_tokens: int = 15,
        code_every_step: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = int(vocab_size)
        self.code_every_step = bool(code_every_step)
        self.max_tokens = int(max_tokens)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.image_proj = nn.Sequential(nn.Linear(input_dim, embed_size), nn.ReLU(inplace=True))
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.rnn = self.rnn_cls(
            embed_size * (2 if self.code_every_step else 1), hidden_size, num_layers=num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, vocab_size)
        never = torch.zeros(vocab_size, dtype=torch.bool)
        never[[PAD, START]] = True
        self.register_buffer("_never", never, persistent=False)
        self._init_rnn()

    def _init_rnn(self) -> None:
        pass

    @classmethod
    def from_config(cls, cfg, vocab: Vocabulary, input_dim: int) -> "CaptionDecoder":
        c = cfg.MODEL.CAPTION
        dec = cls(
            vocab_size=len(vocab), input_dim=input_dim, embed_size=c.EMBED_SIZE, hidden_size=c.HIDDEN_SIZE,
            num_layers=c.NUM_LAYERS, dropout=c.DROPOUT, max_tokens=c.MAX_TOKENS,
            code_every_step=c.CODE_EVERY_STEP,
        )
        if c.WORD_VECTORS:
            dec.init_embeddings(c.WORD_VECTORS, vocab)
        return dec

    def init_embeddings(self, path: str, vocab: Vocabulary) -> int:
        """Initialise word embeddings from a GloVe/word2vec text file; returns words found."""
        vecs, found = load_word_vectors(path, vocab, self.embed.embedding_dim)
        with torch.no_grad():
            self.embed.weight[found] = vecs[found].to(self.embed.weight)
        n = int(found.sum())
        logger.info("word vectors: %d of %d vocabulary words found in %s", n, len(vocab), path)
        return n

    # ---- network ----------------------------------------------------------------------------
    def _logits(self, hidden: Tensor) -> Tensor:
        logits = self.out(self.drop(hidden))  # ... V
        return logits.masked_fill(self._never, float("-inf"))

    def _with_code(self, x: Tensor, code: Optional[Tensor]) -> Tensor:
        """RNN input: x (N, L, E), with the projected code appended at every step if configured."""
        if code is None:
            return x
        return torch.cat([x, code[:, None, :].expand(-1, x.shape[1], -1)], dim=2)  # N L 2E

    def hidden_states(self, region_codes: Tensor, captions: Tensor) -> Tensor:
        """Teacher-forced top-layer hidden states (N, T+2, H): after the code, START, w_1 .. w_T."""
        n = region_codes.shape[0]
        p = self.image_proj(region_codes)  # N E
        start = self.embed(captions.new_full((n, 1), START))  # N 1 E
        words = self.embed(captions)  # N T E
        x = torch.cat([p[:, None, :], start, words], dim=1)  # N T+2 E
        out, _ = self.rnn(self._with_code(x, p if self.code_every_step else None))  # N T+2 H
        return out

    def forward(self, region_codes: Tensor, captions: Tensor) -> Tensor:
        """Teacher-forced logits (N, T+1, V) for targets ``caption_targets(captions)``."""
        return self._logits(self.hidden_states(region_codes, captions)[:, 1:])  # N T+1 V

    def final_hidden(self, region_codes: Tensor, captions: Tensor) -> Tensor:
        """The hidden state (N, H) after reading each whole caption (the state that predicts END),
        e.g. for joint inference's box refinement."""
        if region_codes.shape[0] == 0:
            return region_codes.new_zeros((0, self.hidden_size))
        captions = self._trim(captions)
        out = self.hidden_states(region_codes, captions)  # N T+2 H
        lengths = (captions != PAD).sum(dim=1)  # N
        return out[torch.arange(out.shape[0], device=out.device), 1 + lengths]  # N H

    @staticmethod
    def _trim(captions: Tensor) -> Tensor:
        """Drop all-pad columns at the end (they only cost time)."""
        if captions.numel() == 0:
            return captions
        t = int((captions != PAD).sum(dim=1).max())
        return captions[:, :t]

    def loss(self, region_codes: Tensor, captions: Tensor) -> Tensor:
        """Summed token cross-entropy (END included) / number of captions."""
        if region_codes.shape[0] == 0:
            return region_codes.sum() * 0.0 + sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
        captions = self._trim(captions)
        return caption_loss(self(region_codes, captions), caption_targets(captions), pad_token=PAD)

    def score(self, region_codes: Tensor, captions: Tensor) -> Tensor:
        """Log-likelihood (N,) of each 0-padded caption given its region code, END included."""
        if region_codes.shape[0] == 0:
            return region_codes.new_zeros((0,))
        captions = self._trim(captions)
        logp = torch.log_softmax(self(region_codes, captions).float(), dim=-1)  # N T+1 V
        targets = caption_targets(captions)  # N T+1
        tok = logp.gather(2, targets[:, :, None]).squeeze(2)  # N T+1
        return tok.masked_fill(targets == PAD, 0.0).sum(dim=1)

    # ---- step interface (for beam search) -----------------------------------------------------
    # Decoding runs the recurrent cell step by step with plain matrix products (the same weights
    # and equations as ``self.rnn``): oneDNN's fused RNN kernel costs 15-40 ms per call on this
    # 2-core machine when another process competes for the cores, i.e. per decoding step.
    def _zero_state(self, n: int, like: Tensor) -> Tuple[Tensor, ...]:
        raise NotImplementedError

    def _cell(self, x: Tensor, state: Tuple[Tensor, ...]) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        """One step of ``self.rnn`` in eval mode: x (B, E') -> (top hidden (B, H), new state)."""
        raise NotImplementedError

    def _rnn_linear(self, x: Tensor, name: str, weight: Tensor, bias: Tensor) -> Tensor:
        """``F.linear`` of one recurrent weight (``name``, e.g. ``weight_ih_l0``), through its packed
        copy when the test-time lever TEST.PACKED_LINEAR gave the decoder ``packed_rnn``."""
        packed = self.packed_rnn.get(name) if self.packed_rnn else None
        return F.linear(x, weight, bias) if packed is None else packed_linear(x, weight, bias, packed)

    def _layer_weights(self, layer: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        r = self.rnn
        return (getattr(r, f"weight_ih_l{layer}"), getattr(r, f"bias_ih_l{layer}"),
                getattr(r, f"weight_hh_l{layer}"), getattr(r, f"bias_hh_l{layer}"))

    def init_state(self, region_codes: Tensor) -> Tuple[Optional[Tensor], ...]:
        """Decoder state after reading the projected region code: a flat tuple of batch-first
        tensors, ``(h, c, code)`` for the LSTM and ``(h, code)`` for the GRU (h, c: (N, L, H);
        code: the projected region code (N, E) when CODE_EVERY_STEP, else None)."""
        p = self.image_proj(region_codes)  # N E
        code = p if self.code_every_step else None
        x = p if code is None else torch.cat([p, code], dim=1)  # N E'
        _, state = self._cell(x, self._zero_state(p.shape[0], p))
        return (*state, code)

    def decode_step(self, state: Tuple[Optional[Tensor], ...], tokens: Tensor) -> Tuple[Tensor, Tuple[Optional[Tensor], ...]]:
        """One decoding step (the decoder step protocol of :mod:`densecap.modeling.decoding`):
        (state, tokens (B,)) -> (logprobs (B, V), new state)."""
        out, state = self._step_hidden(state, tokens)  # B H
        logp = torch.log_softmax(self._logits(out).float(), dim=-1)  # B V
        return logp, state

    def _step_hidden(self, state: Tuple[Optional[Tensor], ...], tokens: Tensor) -> Tuple[Tensor, Tuple[Optional[Tensor], ...]]:
        """The recurrent part of a step: (state, tokens (B,)) -> (top hidden (B, H), new state)."""
        *rnn_state, code = state
        x = self.embed(tokens)  # B E
        if code is not None:
            x = torch.cat([x, code], dim=1)  # B 2E
        out, new = self._cell(x, tuple(rnn_state))  # B H
        return out, (*new, code)

    step = decode_step  # the former name

    @torch.no_grad()
    def generate(
        self,
        region_codes: Tensor,
        beam_size: int = 1,
        max_len: Optional[int] = None,
        *,
        length_alpha: float = 0.0,
        num_results: int = 1,
        block_ngram_repeats: int = 0,
    ) -> Tuple[Tensor, Tensor]:
        """Captions for all regions at once (greedy when ``beam_size == 1``).

        At most ``max_len`` words (default ``max_tokens``); a caption reaching ``max_len`` words is
        closed with END (scored with END's real probability), so ``logprobs`` always equals
        ``score(region_codes, tokens)``.

        Returns tokens int64 (N, max_len) 0-padded words and logprobs float32 (N,); with
        ``num_results = R > 1``: (N, R, max_len) and (N, R), best first.
        """
        T = int(self.max_tokens if max_len is None else max_len)
        n = int(region_codes.shape[0])
        R = int(num_results)
        if n == 0:
            tok = region_codes.new_zeros((0, T) if R == 1 else (0, R, T), dtype=torch.long)
            lp = region_codes.new_zeros((0,) if R == 1 else (0, R), dtype=torch.float32)
            return tok, lp
        if self.fast_greedy and beam_size == 1 and R == 1 and length_alpha == 0 and block_ngram_repeats == 0:
            return self._greedy(region_codes, T)
        tokens, logprobs = generate_captions(  # N R T, N R
            self.decode_step, self.init_state(region_codes), torch.full((n,), START, dtype=torch.long, device=region_codes.device),
            max_tokens=T, end_token=END, pad_token=PAD, beam_size=beam_size, length_alpha=length_alpha,
            num_results=R, block_ngram_repeats=block_ngram_repeats,
        )
        if R == 1:
            return tokens[:, 0], logprobs[:, 0]
        return tokens, logprobs

    def _greedy_logits_fn(self):
        """hidden (B, H) -> ``_logits(hidden).float()`` as a fresh tensor, for greedy decoding.
        A plain float32 ``nn.Linear`` output layer folds the never-emitted words' -inf into its
        bias (one matrix product, no mask pass, bit-identical; under bfloat16 autocast the product
        comes back in bfloat16 and is cast up); anything else (int8, dropout in training mode)
        goes through ``_logits``."""
        out = self.out
        if type(out) is nn.Linear and out.bias is not None and out.weight.dtype == torch.float32 and not (
            self.training and self.drop.p > 0
        ):
            bias = out.bias.masked_fill(self._never, float("-inf"))  # V
            packed = getattr(out, "packed_weight", None)  # set by the test-time lever TEST.PACKED_LINEAR
            if packed is not None:
                return lambda h: packed_linear(h, out.weight, bias, packed).float()
            weight_t = out.weight.t()  # H V
            return lambda h: torch.addmm(bias, h, weight_t).float()  # .float(): a no-op in float32
        return lambda h: self._logits(h).float()

    @torch.no_grad()
    def _greedy(self, region_codes: Tensor, T: int) -> Tuple[Tensor, Tensor]:
        """Greedy decoding = ``beam_search`` with one beam, without its bookkeeping (no (N, V) score
        copies, no top-k over V, no history gathers): the argmax word until END, the (T+1)-th token
        forced to END. Regions that emitted END leave the batch, so later steps only compute the
        captions still going. Returns tokens int64 (N, T) 0-padded, logprobs float32 (N,)."""
        n, dev = int(region_codes.shape[0]), region_codes.device
        tokens = torch.zeros((n, T), dtype=torch.long, device=dev)  # N T
        logprobs = torch.zeros((n,), dtype=torch.float32, device=dev)  # N
        state = self.init_state(region_codes)
        rows = torch.arange(n, device=dev)  # n' regions still decoding
        last = torch.full((n,), START, dtype=torch.long, device=dev)  # n'
        step = self._greedy_logits_fn()
        for t in range(T + 1):
            out, state = self._step_hidden(state, last)  # n' H
            logits = step(out)  # n' V, float32, never-words at -inf; a fresh tensor the loop may overwrite
            mx, tok = logits.max(dim=1)  # n'
            end_logit = logits[:, END].clone() if t == T else None  # n'
            # log_softmax at one word = its logit - max - log(sum(exp(logits - max))), in place
            log_z = logits.sub_(mx[:, None]).exp_().sum(dim=1).log_()  # n'
            if t == T:  # the (T+1)-th token must be END
                logprobs[rows] += end_logit - mx - log_z
                break
            lp = -log_z  # the argmax word's log-probability
            logprobs[rows] += lp
            ended = tok == END  # n'
            tokens[rows, t] = tok.masked_fill(ended, PAD)
            if bool(ended.any()):
                keep = torch.nonzero(~ended).flatten()  # n''
                if keep.numel() == 0:
                    break
                rows, tok = rows[keep], tok[keep]
                state = tree_map(lambda x: x.index_select(0, keep), state)
            last = tok
        return tokens, logprobs


@CAPTION_DECODER_REGISTRY.register("lstm")
class LSTMCaptionDecoder(CaptionDecoder):
    """The original's LSTM (forget-gate bias 1)."""

    rnn_cls = nn.LSTM

    def _init_rnn(self) -> None:
        H = self.hidden_size
        with torch.no_grad():
            for layer in range(self.num_layers):
                getattr(self.rnn, f"bias_ih_l{layer}")[H : 2 * H].fill_(1.0)
                getattr(self.rnn, f"bias_hh_l{layer}")[H : 2 * H].fill_(0.0)

    def _zero_state(self, n: int, like: Tensor):
        z = like.new_zeros((n, self.num_layers, self.hidden_size))  # N L H
        return (z, z)

    def _cell(self, x: Tensor, state):
        h, c = state  # B L H each
        hs, cs = [], []
        for layer in range(self.num_layers):
            w_ih, b_ih, w_hh, b_hh = self._layer_weights(layer)
            gates = (self._rnn_linear(x, f"weight_ih_l{layer}", w_ih, b_ih)
                     + self._rnn_linear(h[:, layer], f"weight_hh_l{layer}", w_hh, b_hh))  # B 4H
            i, f, g, o = gates.chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c[:, layer] + torch.sigmoid(i) * torch.tanh(g)  # B H
            x = torch.sigmoid(o) * torch.tanh(c_new)  # B H
            hs.append(x)
            cs.append(c_new)
        return x, (torch.stack(hs, dim=1), torch.stack(cs, dim=1))


@CAPTION_DECODER_REGISTRY.register("gru")
class GRUCaptionDecoder(CaptionDecoder):
    """A GRU in place of the LSTM (same interface)."""

    rnn_cls = nn.GRU

    def _zero_state(self, n: int, like: Tensor):
        return (like.new_zeros((n, self.num_layers, self.hidden_size)),)  # N L H

    def _cell(self, x: Tensor, state):
        hs = []
        for layer in range(self.num_layers):
            w_ih, b_ih, w_hh, b_hh = self._layer_weights(layer)
            h = state[0][:, layer]  # B H
            i_r, i_z, i_n = self._rnn_linear(x, f"weight_ih_l{layer}", w_ih, b_ih).chunk(3, dim=1)
            h_r, h_z, h_n = self._rnn_linear(h, f"weight_hh_l{layer}", w_hh, b_hh).chunk(3, dim=1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            x = (1 - z) * n + z * h  # B H
            hs.append(x)
        return x, (torch.stack(hs, dim=1),)


def build_caption_decoder(cfg, vocab: Vocabulary, input_dim: int) -> CaptionDecoder:
    return CAPTION_DECODER_REGISTRY.get(cfg.MODEL.CAPTION.DECODER).from_config(cfg, vocab, input_dim)
