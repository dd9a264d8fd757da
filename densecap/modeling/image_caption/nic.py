"""Show and Tell (NIC, Vinyals et al.; TensorFlow im2txt).

The pooled image feature goes through one Linear (no bias) to the embedding size and is fed to
the LSTM once, as its first input; then START and the words. Dropout on the LSTM input and
output; every weight uniform in [-0.08, 0.08] as in im2txt.

Shapes: B: images, C: channels, H, W: feature grid, E: embedding, D: LSTM hidden, V: vocabulary.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from torch import Tensor, nn

from densecap.data.tokenizer import Vocabulary

from .base import ImageCaptionHead

INIT_SCALE = 0.08


def masked_mean(features: Tensor, valid_mask: Optional[Tensor]) -> Tensor:
    """Mean over the grid locations on the image: (B, C, H, W), (B, H, W) bool -> (B, C)."""
    if valid_mask is None:
        return features.mean(dim=(2, 3))
    m = valid_mask.to(features.dtype).unsqueeze(1)  # B 1 H W
    return (features * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp(min=1.0)


class NICHead(ImageCaptionHead):
    has_attention = False

    def __init__(
        self,
        *,
        vocab: Vocabulary,
        embed: nn.Embedding,
        in_channels: int,
        hidden_size: int = 512,
        dropout: float = 0.3,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(vocab=vocab, embed=embed, loss_weight=loss_weight)
        E = embed.embedding_dim
        self.image_embed = nn.Linear(in_channels, E, bias=False)
        self.lstm = nn.LSTMCell(E, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.logits = nn.Linear(hidden_size, len(vocab))
        for name, p in self.named_parameters():
            if not name.startswith("embed."):  # the embedding is initialised by its builder
                nn.init.uniform_(p, -INIT_SCALE, INIT_SCALE)

    def init_state(self, features: Tensor, valid_mask: Optional[Tensor]) -> Any:
        x = self.image_embed(masked_mean(features, valid_mask))  # B E
        B = x.shape[0]
        zeros = x.new_zeros(B, self.lstm.hidden_size)
        h, c = self.lstm(self.dropout(x), (zeros, zeros))  # B D
        return (h, c)

    def step(self, state: Any, prev_tokens: Tensor, mode: str) -> Tuple[Tensor, Any, Dict[str, Tensor]]:
        h, c = self.lstm(self.dropout(self.embed(prev_tokens)), state)  # B D
        return self.mask_logits(self.logits(self.dropout(h))), (h, c), {}
