"""Losses of the whole-image caption heads, as pure functions.

Shapes: B: images, S: decoding steps (words + END), V: vocabulary, L: feature-grid locations.
``step_mask`` (B, S) marks the steps that predict a real target (the words and the END token);
``loc_mask`` (B, L) marks grid locations that lie on the image (not padding).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "token_logprobs",
    "caption_nll",
    "doubly_stochastic_penalty",
    "attention_entropy",
    "reinforce_attention_loss",
    "attention_supervision_loss",
    "self_critical_loss",
]


def token_logprobs(logits: Tensor, targets: Tensor, step_mask: Tensor) -> Tensor:
    """log p(target) at every valid step, 0 elsewhere. logits (B, S, V), targets (B, S) -> (B, S)."""
    tok = F.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return tok.masked_fill(step_mask <= 0, 0.0)


def caption_nll(logits: Tensor, targets: Tensor, step_mask: Tensor) -> Tensor:
    """Negative log-likelihood summed over valid steps, per caption: (B,)."""
    return -token_logprobs(logits, targets, step_mask).sum(dim=1)


def doubly_stochastic_penalty(alpha: Tensor, step_mask: Tensor, loc_mask: Tensor) -> Tensor:
    """Xu et al.'s doubly stochastic regularisation sum_i (1 - sum_t alpha_ti)^2, per caption: (B,).

    alpha (B, S, L) attention weights; only valid steps are summed over t and only valid
    locations over i (the lambda weight is applied by the caller).
    """
    mass = (alpha * step_mask.unsqueeze(-1)).sum(dim=1)  # B L
    return ((1.0 - mass) ** 2 * loc_mask).sum(dim=1)


def attention_entropy(att_logits: Tensor, loc_mask: Tensor) -> Tensor:
    """Entropy of softmax(att_logits) over valid locations at every step: (B, S)."""
    logp = F.log_softmax(att_logits.masked_fill(~loc_mask[:, None, :], float("-inf")), dim=-1)
    p = logp.exp()
    return -(p * logp.masked_fill(~loc_mask[:, None, :], 0.0)).sum(dim=-1)


def reinforce_attention_loss(att_logits: Tensor, samples: Tensor, advantage: Tensor, step_mask: Tensor, loc_mask: Tensor) -> Tensor:
    """REINFORCE surrogate for sampled attention locations, per caption: (B,).

    ``-advantage_b * sum_t log p(s_t | ...)`` where p = softmax(att_logits): its gradient reaches
    the attention only through the log-probabilities of the sampled locations ``samples`` (B, S).
    ``advantage`` (B,) (reward minus baseline) is treated as a constant.
    """
    logp = F.log_softmax(att_logits.masked_fill(~loc_mask[:, None, :], float("-inf")), dim=-1)  # B S L
    sampled = logp.gather(-1, samples.unsqueeze(-1)).squeeze(-1) * step_mask  # B S
    return -advantage.detach() * sampled.sum(dim=1)


def attention_supervision_loss(alpha: Tensor, regions: Tensor, step_mask: Tensor, eps: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """Attention supervised by ground-truth regions (the "attention correctness" of Liu et al.,
    AAAI 2017): ``-log sum_{i in R_t} alpha_ti`` for every step whose word has a region mask.

    alpha (B, S, L) attention weights; regions (B, S, L) bool, the cells of the regions that name
    step t's word (all False for words without one); step_mask (B, S). Returns the summed loss and
    the number of supervised steps (the caller normalises).
    """
    supervised = regions.any(dim=-1) & (step_mask > 0)  # B S
    mass = (alpha * regions.to(alpha.dtype)).sum(dim=-1)  # B S
    nll = -torch.log(mass.clamp(min=eps)) * supervised.to(alpha.dtype)  # B S
    return nll.sum(), supervised.sum()


def self_critical_loss(logprobs: Tensor, reward: Tensor, baseline: Tensor) -> Tensor:
    """Self-critical sequence training (Rennie et al. 2017): ``-(r(w^s) - b) * log p(w^s)``, mean
    over the sampled captions.

    logprobs (M,): total log-probability of each sampled caption (with gradient); reward (M,): its
    reward (e.g. CIDEr-D); baseline (M,): the reward of the greedy caption of the same input. Reward
    and baseline are constants. A sample better than the greedy decode is made more likely, a worse
    one less likely; a sample as good as it contributes no gradient.
    """
    advantage = (reward - baseline).detach().to(logprobs.dtype)  # M
    if logprobs.numel() == 0:
        return logprobs.sum() * 0.0
    return -(advantage * logprobs).mean()
