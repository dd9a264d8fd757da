"""Generic batched beam search, shared by the region captioner and the whole-image caption head
(both decode through :func:`generate_captions`: at most ``max_tokens`` words, then END).

The decoder is seen only through a *step function*::

    step_fn(state, last_tokens) -> (logprobs, new_state)
        state        any nest (tensor / tuple / list / dict / None) of tensors whose first
                     dimension is the flattened batch B*K (item-major: rows b*K .. b*K+K-1
                     belong to item b)
        last_tokens  int64 (B*K,)   the previous token of each hypothesis
        logprobs     float (B*K, V) log-probabilities of the next token (normalised)

Search rules
------------
* Every item keeps ``beam_size`` (K) live hypotheses. At each step the extensions are ranked;
  those among the best K that end with ``end_token`` go to the item's pool of finished
  hypotheses, and the best K extensions that do not end stay live (looked for among the best
  2K, so the beam never shrinks).
* ``max_len`` counts generated tokens *including* the end token.
* Ranking score = total log-prob / length**alpha (length = generated tokens incl. the end
  token; ``alpha = 0`` means no length normalisation).
* An item stops when its ``num_results``-th best finished hypothesis scores at least the best
  score any live hypothesis could still reach (an exact bound, since log-probs only decrease).
* If fewer than ``num_results`` hypotheses finished within ``max_len`` steps, the best live
  (unfinished) ones fill the remaining places: a result is always returned.
* ``block_ngram_repeats = n > 0`` forbids any token that would repeat an n-gram already in the
  hypothesis (n = 1: no word twice; n = 3: no repeated trigram); the end token is never blocked.
* ``beam_size`` larger than the vocabulary is fine (impossible candidates score -inf).
* With ``beam_size = 1`` and ``alpha = 0`` this is exactly greedy decoding (argmax until END).

Shapes: B: items decoded together, K: beam size, V: vocabulary size, L: max_len,
N: results returned per item, C: candidates looked at per step (2K).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Tuple

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

StepFn = Callable[[Any, Tensor], Tuple[Tensor, Any]]

__all__ = ["BeamSearchOutput", "beam_search", "generate_captions", "tree_map", "StepFn"]


@dataclass
class BeamSearchOutput:
    """Results of :func:`beam_search`, best first along dimension 1.

    tokens    int64 (B, N, L)  generated tokens incl. the end token when finished, pad after
    logprobs  float (B, N)     total log-probability of ``tokens`` (end token included)
    scores    float (B, N)     the ranking score, logprobs / lengths**alpha
    lengths   int64 (B, N)     number of generated tokens (end token included when finished)
    finished  bool  (B, N)     False for hypotheses that hit ``max_len`` without the end token
    """

    tokens: Tensor
    logprobs: Tensor
    scores: Tensor
    lengths: Tensor
    finished: Tensor


def tree_map(fn: Callable[[Tensor], Tensor], tree: Any) -> Any:
    """Apply ``fn`` to every tensor of a nest of tuples / lists / dicts."""
    if tree is None:
        return None
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, tuple):
        return tuple(tree_map(fn, t) for t in tree)
    if isinstance(tree, list):
        return [tree_map(fn, t) for t in tree]
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    return tree


def _ngram_block_mask(hist: Tensor, n: int, vocab_size: int) -> Tensor:
    """Tokens each hypothesis may not emit next. hist: (R, t) int64 -> bool (R, V)."""
    r, t = hist.shape
    banned = torch.zeros(r, vocab_size, dtype=torch.bool, device=hist.device)
    if t < n:
        return banned
    windows = hist.unfold(1, n, 1)  # R W n  (W = t - n + 1)
    prefix = hist[:, t - (n - 1):] if n > 1 else hist[:, :0]  # R n-1
    match = (windows[:, :, : n - 1] == prefix[:, None, :]).all(dim=-1)  # R W
    hits = torch.zeros(r, vocab_size, dtype=torch.float32, device=hist.device)
    hits.scatter_add_(1, windows[:, :, n - 1], match.float())
    return hits > 0


def _rank(scores: Tensor, tier: Tensor, k: int) -> Tensor:
    """Indices of the top ``k`` along dim 1 by (tier desc, score desc), ties keep order."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    tier_sorted = tier.gather(1, order)
    order2 = torch.sort(tier_sorted.to(torch.int8), dim=1, descending=True, stable=True).indices
    return order.gather(1, order2)[:, :k]


@torch.no_grad()
def beam_search(
    step_fn: StepFn,
    init_state: Any,
    start_tokens: Tensor,
    *,
    beam_size: int,
    max_len: int,
    end_token: int,
    pad_token: int = 0,
    length_alpha: float = 0.0,
    num_results: int = 1,
    block_ngram_repeats: int = 0,
) -> BeamSearchOutput:
    """Batched beam search over B items (see the module docstring for the rules).

    Args:
        step_fn: ``(state, last_tokens (B*K,)) -> (logprobs (B*K, V), state)``.
        init_state: decoder state for the B items (first dimension B); it is repeated K times.
        start_tokens: int64 (B,), the first ``last_tokens`` (usually the START token).
        beam_size: K >= 1.
        max_len: maximum number of generated tokens, the end token included.
        end_token: the token that finishes a hypothesis.
        pad_token: filler after the end token in ``tokens``.
        length_alpha: length normalisation exponent (>= 0).
        num_results: N <= K best hypotheses returned per item.
        block_ngram_repeats: 0 = off; n > 0 blocks repeating any n-gram.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= num_results <= beam_size:
        raise ValueError(f"num_results must be in [1, beam_size={beam_size}], got {num_results}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if length_alpha < 0:
        raise ValueError(f"length_alpha must be >= 0, got {length_alpha}")
    B, K, N, L = int(start_tokens.shape[0]), int(beam_size), int(num_results), int(max_len)
    device = start_tokens.device
    ninf = float("-inf")

    fin_tokens = torch.full((B, N, L), pad_token, dtype=torch.long, device=device)
    fin_logp = torch.full((B, N), ninf, device=device)
    fin_score = torch.full((B, N), ninf, device=device)
    fin_len = torch.zeros((B, N), dtype=torch.long, device=device)
    if B == 0:
        return BeamSearchOutput(fin_tokens, fin_logp, fin_score, fin_len, torch.zeros((B, N), dtype=torch.bool))

    state = tree_map(lambda x: x.repeat_interleave(K, dim=0), init_state)
    last = start_tokens.long().repeat_interleave(K)  # BK
    beam_logp = torch.full((B, K), ninf, device=device)
    beam_logp[:, 0] = 0.0  # one live hypothesis per item at the start: no duplicates
    hist = torch.zeros((B, K, 0), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    base = (torch.arange(B, device=device) * K)[:, None]  # B 1
    max_norm = float(L) ** length_alpha
    steps = 0
    for t in range(L):
        steps = t + 1
        logp, state = step_fn(state, last)  # BK V
        logp = logp.float()
        V = int(logp.shape[-1])
        if block_ngram_repeats > 0 and t > 0:
            banned = _ngram_block_mask(hist.reshape(B * K, t), block_ngram_repeats, V)  # BK V
            banned[:, end_token] = False
            logp = logp.masked_fill(banned, ninf)
        cand = (beam_logp[:, :, None] + logp.view(B, K, V)).view(B, K * V)  # B KV
        C = min(2 * K, K * V)
        top_logp, top_idx = cand.topk(C, dim=1)  # B C
        top_beam = torch.div(top_idx, V, rounding_mode="floor")  # B C
        top_tok = top_idx % V  # B C
        is_end = (top_tok == end_token) & torch.isfinite(top_logp)  # B C
        # only end tokens ranked within the top K finish a hypothesis (the beam proper);
        # with K = 1 this makes the search exactly greedy
        in_beam = torch.arange(C, device=device)[None, :] < K  # 1 C

        # finished hypotheses enter the pool (items already done take nothing new)
        length = t + 1
        end_score = top_logp / (float(length) ** length_alpha)
        end_score = end_score.masked_fill(~(is_end & in_beam) | done[:, None], ninf)  # B C
        if bool(torch.isfinite(end_score).any()):
            cand_hist = hist.gather(1, top_beam[:, :, None].expand(B, C, t))  # B C t
            cand_tokens = torch.full((B, C, L), pad_token, dtype=torch.long, device=device)
            cand_tokens[:, :, :t] = cand_hist
            cand_tokens[:, :, t] = top_tok
            all_score = torch.cat([fin_score, end_score], dim=1)  # B N+C
            all_logp = torch.cat([fin_logp, top_logp.masked_fill(~torch.isfinite(end_score), ninf)], dim=1)
            all_tokens = torch.cat([fin_tokens, cand_tokens], dim=1)  # B N+C L
            all_len = torch.cat([fin_len, torch.full((B, C), length, dtype=torch.long, device=device)], dim=1)
            keep = _rank(all_score, torch.isfinite(all_score), N)  # B N
            fin_score = all_score.gather(1, keep)
            fin_logp = all_logp.gather(1, keep)
            fin_len = all_len.gather(1, keep)
            fin_tokens = all_tokens.gather(1, keep[:, :, None].expand(B, N, L))

        # the best K non-final extensions stay live
        live_key = top_logp.masked_fill(is_end, ninf)  # B C
        if C < K:  # fewer candidates than beams (K*V < K can't happen, kept for safety)
            pad = torch.full((B, K - C), ninf, device=device)
            live_key = torch.cat([live_key, pad], 1)
            top_beam = torch.cat([top_beam, torch.zeros_like(pad, dtype=torch.long)], 1)
            top_tok = torch.cat([top_tok, torch.full_like(pad, pad_token, dtype=torch.long)], 1)
        sel_logp, sel = live_key.topk(K, dim=1)  # B K
        sel_beam = top_beam.gather(1, sel)  # B K
        sel_tok = top_tok.gather(1, sel)  # B K
        flat = (base + sel_beam).reshape(-1)  # BK
        state = tree_map(lambda x: x.index_select(0, flat), state)
        hist = torch.cat([hist.gather(1, sel_beam[:, :, None].expand(B, K, t)), sel_tok[:, :, None]], dim=2)
        last = sel_tok.reshape(-1)
        beam_logp = sel_logp

        # stop an item once no live hypothesis can beat its N-th finished one
        best_live = beam_logp.max(dim=1).values / max_norm  # B
        done = done | (fin_score[:, N - 1] >= best_live)
        if bool(done.all()):
            break

    # guaranteed results: unfinished live hypotheses fill the places no finished one took
    live_len = torch.full((B, K), steps, dtype=torch.long, device=device)
    live_score = beam_logp / (float(steps) ** length_alpha)
    live_tokens = torch.full((B, K, L), pad_token, dtype=torch.long, device=device)
    live_tokens[:, :, :steps] = hist
    all_score = torch.cat([fin_score, live_score], 1)  # B N+K
    tier = torch.cat([torch.isfinite(fin_score), torch.zeros_like(live_score, dtype=torch.bool)], 1)
    keep = _rank(all_score, tier, N)  # B N
    tokens = torch.cat([fin_tokens, live_tokens], 1).gather(1, keep[:, :, None].expand(B, N, L))
    logprobs = torch.cat([fin_logp, beam_logp], 1).gather(1, keep)
    lengths = torch.cat([fin_len, live_len], 1).gather(1, keep)
    finished = tier.gather(1, keep)
    return BeamSearchOutput(tokens, logprobs, all_score.gather(1, keep), lengths, finished)


@torch.no_grad()
def generate_captions(
    decode_step: StepFn,
    init_state: Any,
    start_tokens: Tensor,
    *,
    max_tokens: int,
    end_token: int,
    pad_token: int = 0,
    beam_size: int = 1,
    length_alpha: float = 0.0,
    num_results: int = 1,
    block_ngram_repeats: int = 0,
) -> Tuple[Tensor, Tensor]:
    """Captions of at most ``max_tokens`` words, for every caption decoder of the project.

    ``max_tokens`` has one meaning everywhere (``MODEL.CAPTION.MAX_TOKENS`` and
    ``MODEL.IMAGE_CAPTION.MAX_TOKENS``, the datasets' truncation): the number of *words*, the end
    token not counted. A caption that reaches ``max_tokens`` words is closed with the end token
    (scored with its real probability), so every returned caption is finished and its log-prob
    is what the decoder's teacher-forced score gives.

    ``decode_step`` is the one decoder step protocol (:data:`StepFn`):
    ``(state, last_tokens (B*K,)) -> (logprobs (B*K, V), state)``.

    Returns tokens int64 (B, N, max_tokens) words, pad after the caption (no START/END), and
    logprobs float32 (B, N), best first.
    """
    T = int(max_tokens)
    calls = [0]
    only_end = None

    def step(state, tokens):
        nonlocal only_end
        logp, state = decode_step(state, tokens)
        if calls[0] == T:  # the (T+1)-th token must be the end token
            if only_end is None:
                only_end = torch.full((logp.shape[-1],), float("-inf"), device=logp.device, dtype=logp.dtype)
                only_end[end_token] = 0.0
            logp = logp + only_end
        calls[0] += 1
        return logp, state

    res = beam_search(
        step, init_state, start_tokens, beam_size=beam_size, max_len=T + 1, end_token=end_token,
        pad_token=pad_token, length_alpha=length_alpha, num_results=num_results,
        block_ngram_repeats=block_ngram_repeats,
    )
    tokens = res.tokens.masked_fill(res.tokens == end_token, pad_token)[:, :, :T]  # B N T
    return tokens, res.logprobs.float()


def sample_captions(
    decode_step: StepFn,
    init_state: Any,
    start_tokens: Tensor,
    *,
    max_tokens: int,
    end_token: int,
    pad_token: int = 0,
    greedy: bool = False,
) -> Tuple[Tensor, Tensor]:
    """One caption per row drawn word by word from ``decode_step`` (``greedy``: the argmax word),
    keeping the autograd graph (self-critical training). ``max_tokens`` means what it means for
    :func:`generate_captions`: at most that many words, then the end token, scored with its real
    probability, so a sampled caption's log-probability is the decoder's teacher-forced score.

    Returns tokens int64 (B, max_tokens) words, pad after the caption (no START/END), and logprobs
    (B,): the total log-probability of the words and of the end token.
    """
    T = int(max_tokens)
    B, dev = start_tokens.shape[0], start_tokens.device
    state, last = init_state, start_tokens
    done = torch.zeros((B,), dtype=torch.bool, device=dev)  # B
    logprobs = torch.zeros((B,), dtype=torch.float32, device=dev)  # B
    tokens = torch.full((B, T), pad_token, dtype=torch.long, device=dev)  # B T
    for t in range(T + 1):
        logp, state = decode_step(state, last)  # B V
        if t == T:  # the (T+1)-th token is the end token
            logprobs = logprobs + logp[:, end_token].float().masked_fill(done, 0.0)
            break
        if greedy:
            tok = logp.detach().argmax(dim=-1)  # B
        else:
            tok = torch.multinomial(logp.detach().float().exp(), 1).squeeze(1)  # B
        logprobs = logprobs + logp.gather(1, tok[:, None]).squeeze(1).float().masked_fill(done, 0.0)
        tok = tok.masked_fill(done, pad_token)
        tokens[:, t] = tok.masked_fill(tok == end_token, pad_token)
        done = done | (tok == end_token)
        if bool(done.all()):
            break
        last = tok
    return tokens, logprobs
