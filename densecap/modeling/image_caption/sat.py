"""Show, Attend and Tell (Xu et al. 2015): soft and hard attention over the feature grid.

At step t, from the previous hidden state h (before the step's LSTM update)::

    e_ti   = w^T relu(W_a a_i + W_h h)            additive attention over locations i
    alpha_t = softmax_i(e_t)                      (locations off the image excluded)
    beta_t  = sigmoid(f_beta(h))                  gate on the context
    z_t     = beta_t * sum_i alpha_ti a_i         soft: the expectation
            = beta_t * a_{s_t}, s_t ~ alpha_t      hard (training): one sampled location
    h, c    = LSTM([E y_{t-1}; z_t], (h, c))      h0, c0 = tanh(Linear(mean_i a_i))
    logits  = L_o(dropout(tanh(E y_{t-1} + L_h h + L_z z_t)))   the paper's deep output

Losses: the caption NLL; lambda * sum_i (1 - sum_t alpha_ti)^2 (doubly stochastic); hard
attention adds the REINFORCE term -(R - b) sum_t log alpha_t[s_t] with R = log p(y | s, a), b a
moving-average baseline (buffer ``baseline``, in the state_dict), and an entropy bonus. As in Xu
et al. (sec. 4.1) each training image uses the expected context instead of a sample with
probability ``hard_expectation_prob``; at test time hard attention uses the expected context
(``test_attention = "argmax"`` picks the most likely location instead).

Shapes: B: images, C: channels, H, W: feature grid, L = H*W, A: attention size, E: embedding,
D: LSTM hidden, V: vocabulary, S: steps.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densecap.data.tokenizer import Vocabulary

from .base import ImageCaptionHead
from .losses import (
    attention_entropy,
    attention_supervision_loss,
    doubly_stochastic_penalty,
    reinforce_attention_loss,
    token_logprobs,
)


def pool_grid(features: Tensor, valid_mask: Optional[Tensor], size: int) -> Tuple[Tensor, Tensor]:
    """Masked adaptive average pooling to ``size`` x ``size`` (0 = keep the grid).

    Returns features (B, C, h, w) and the locations on the image (B, h, w) bool.
    """
    B, _, H, W = features.shape
    m = torch.ones((B, H, W), dtype=torch.bool, device=features.device) if valid_mask is None else valid_mask.bool()
    if size <= 0 or (H == size and W == size):
        return features * m.unsqueeze(1).to(features.dtype), m
    mf = m.unsqueeze(1).to(features.dtype)  # B 1 H W
    num = F.adaptive_avg_pool2d(features * mf, size)  # B C s s
    den = F.adaptive_avg_pool2d(mf, size)  # B 1 s s
    return num / den.clamp(min=1e-6), den.squeeze(1) > 0


class AdditiveAttention(nn.Module):
    """e_i = w^T relu(W_a a_i + W_h h). ``project`` precomputes W_a a once per image."""

    def __init__(self, feat_dim: int, hidden_size: int, att_size: int) -> None:
        super().__init__()
        self.feat_proj = nn.Linear(feat_dim, att_size)
        self.hidden_proj = nn.Linear(hidden_size, att_size, bias=False)
        self.score = nn.Linear(att_size, 1)

    def project(self, a: Tensor) -> Tensor:
        return self.feat_proj(a)  # B L A

    def forward(self, proj: Tensor, h: Tensor, loc_mask: Tensor) -> Tensor:
        """Attention logits (B, L); locations off the image are -inf."""
        e = self.score(F.relu(proj + self.hidden_proj(h)[:, None, :])).squeeze(-1)  # B L
        return e.masked_fill(~loc_mask, float("-inf"))


class SATHead(ImageCaptionHead):
    has_attention = True

    def __init__(
        self,
        *,
        vocab: Vocabulary,
        embed: nn.Embedding,
        in_channels: int,
        hidden_size: int = 512,
        attention_size: int = 512,
        dropout: float = 0.3,
        hard: bool = False,
        doubly_stochastic_weight: float = 1.0,
        entropy_weight: float = 0.01,
        baseline_decay: float = 0.9,
        hard_expectation_prob: float = 0.5,
        pool_size: int = 0,
        loss_weight: float = 1.0,
        attention_supervision_weight: float = 0.0,
    ) -> None:
        super().__init__(vocab=vocab, embed=embed, loss_weight=loss_weight)
        E, C, D = embed.embedding_dim, int(in_channels), int(hidden_size)
        self.hard = bool(hard)
        self.doubly_stochastic_weight = float(doubly_stochastic_weight)
        self.entropy_weight = float(entropy_weight)
        self.baseline_decay = float(baseline_decay)
        self.hard_expectation_prob = float(hard_expectation_prob)
        self.pool_size = int(pool_size)
        # weight of -log(attention mass on the regions that name the word), when the caller passes
        # word_regions (joint training with region annotations); 0 = Xu et al.'s unsupervised attention
        self.attention_supervision_weight = float(attention_supervision_weight)
        self.test_attention = "expectation"
        self.attention = AdditiveAttention(C, D, int(attention_size))
        self.init_h = nn.Linear(C, D)
        self.init_c = nn.Linear(C, D)
        self.gate = nn.Linear(D, 1)
        self.lstm = nn.LSTMCell(E + C, D)
        self.out_h = nn.Linear(D, E)
        self.out_z = nn.Linear(C, E)
        self.logits = nn.Linear(E, len(vocab))
        self.dropout = nn.Dropout(dropout)
        # moving-average REINFORCE baseline and the number of updates it has seen
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("baseline_count", torch.zeros((), dtype=torch.long))

    def init_state(self, features: Tensor, valid_mask: Optional[Tensor]) -> Any:
        grid, loc = pool_grid(features, valid_mask, self.pool_size)  # B C h w, B h w
        B, C, h, w = grid.shape
        a = grid.flatten(2).transpose(1, 2)  # B L C
        loc = loc.flatten(1)  # B L
        mean = (a * loc.unsqueeze(-1)).sum(1) / loc.sum(1, keepdim=True).clamp(min=1)  # B C
        state = {
            "a": a,
            "proj": self.attention.project(a),  # B L A
            "loc": loc,
            "h": torch.tanh(self.init_h(mean)),  # B D
            "c": torch.tanh(self.init_c(mean)),  # B D
            "grid": (h, w),
        }
        if self.hard and self.training:
            # which images sample a location (the rest use the expectation, Xu et al. 4.1)
            state["hard"] = torch.rand(B, device=features.device) >= self.hard_expectation_prob
        return state

    def step(self, state: Any, prev_tokens: Tensor, mode: str) -> Tuple[Tensor, Any, Dict[str, Tensor]]:
        a, loc, h = state["a"], state["loc"], state["h"]
        e = self.attention(state["proj"], h, loc)  # B L
        alpha = F.softmax(e, dim=-1)  # B L
        aux: Dict[str, Tensor] = {"alpha": alpha, "att_logits": e}
        soft = torch.bmm(alpha.unsqueeze(1), a).squeeze(1)  # B C
        if self.hard and mode == "train" and "hard" in state:
            s = torch.multinomial(alpha.detach(), 1).squeeze(1)  # B
            picked = a[torch.arange(a.shape[0], device=a.device), s]  # B C (no gradient to alpha)
            z = torch.where(state["hard"][:, None], picked, soft)
            aux["sample"] = s
            aux["hard"] = state["hard"]
        elif self.hard and self.test_attention == "argmax":
            s = alpha.argmax(dim=-1)
            z = a[torch.arange(a.shape[0], device=a.device), s]
        else:
            z = soft
        z = torch.sigmoid(self.gate(h)) * z  # B C
        y = self.embed(prev_tokens)  # B E
        h, c = self.lstm(self.dropout(torch.cat([y, z], dim=1)), (h, state["c"]))  # B D
        out = torch.tanh(y + self.out_h(self.dropout(h)) + self.out_z(z))  # B E
        logits = self.mask_logits(self.logits(self.dropout(out)))  # B V
        new_state = dict(state)
        new_state["h"], new_state["c"] = h, c
        return logits, new_state, aux

    def static_outputs(self, state: Any) -> Dict[str, Any]:
        return {"loc_mask": state["loc"], "grid": state["grid"]}

    def extra_losses(self, outputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        step_mask, loc = outputs["step_mask"], outputs["loc_mask"]
        n_tokens = step_mask.sum().clamp(min=1.0)
        losses: Dict[str, Tensor] = {}
        if self.attention_supervision_weight > 0 and "word_regions" in outputs:
            h, w = outputs["grid"]
            wr = outputs["word_regions"]  # B T H' W' on the backbone grid
            B, T = wr.shape[:2]
            if tuple(wr.shape[-2:]) != (h, w):  # to the attention grid: a cell counts if it overlaps a region
                wr = F.adaptive_max_pool2d(wr.flatten(0, 1).unsqueeze(1), (h, w)).view(B, T, h, w)
            regions = torch.zeros_like(outputs["alpha"], dtype=torch.bool)  # B S L
            regions[:, :T] = (wr.flatten(2) > 0) & loc[:, None, :]
            total, count = attention_supervision_loss(outputs["alpha"], regions, step_mask)
            losses["loss_image_caption_attention"] = self.attention_supervision_weight * total / count.clamp(min=1)
        if self.doubly_stochastic_weight > 0:
            pen = doubly_stochastic_penalty(outputs["alpha"], step_mask, loc.float())  # B
            losses["loss_image_caption_doubly_stochastic"] = self.doubly_stochastic_weight * pen.sum() / n_tokens
        if self.hard and "sample" in outputs:
            hard = outputs["hard"][:, 0]  # B (constant over steps)
            hm = hard.float()
            reward = token_logprobs(outputs["logits"], outputs["targets"], step_mask).sum(1).detach()  # B
            if bool(hard.any()):
                if self.training and int(self.baseline_count) == 0:
                    with torch.no_grad():
                        self.baseline.fill_(float(reward[hard].mean()))
                baseline = self.baseline.clone()
                advantage = reward - baseline  # B
                outputs["advantage"] = advantage
                rl = reinforce_attention_loss(outputs["att_logits"], outputs["sample"], advantage, step_mask, loc)  # B
                losses["loss_image_caption_reinforce"] = (rl * hm).sum() / n_tokens
                if self.entropy_weight > 0:
                    ent = (attention_entropy(outputs["att_logits"], loc) * step_mask).sum(1)  # B
                    losses["loss_image_caption_entropy"] = -self.entropy_weight * (ent * hm).sum() / n_tokens
                if self.training:
                    with torch.no_grad():
                        d = self.baseline_decay
                        self.baseline.mul_(d).add_((1 - d) * reward[hard].mean())
                        self.baseline_count += 1
            else:
                zero = outputs["att_logits"].masked_fill(~torch.isfinite(outputs["att_logits"]), 0).sum() * 0.0
                losses["loss_image_caption_reinforce"] = zero
                if self.entropy_weight > 0:
                    losses["loss_image_caption_entropy"] = zero.clone()
        return losses
