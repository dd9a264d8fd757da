"""A small deterministic stand-in for the dense captioning model, honouring its eval contract.

N: regions, D: region code size (8), T: caption tokens (2).

``FakeDenseCapModel()(batched_inputs)`` returns one ``{"instances": Instances(...)}`` per input,
with ``pred_boxes`` [x, y, w, h] in ORIGINAL-image pixels sorted by score, ``scores`` in [0, 1],
``pred_captions``, ``pred_caption_tokens``, ``pred_caption_logprobs`` and ``region_codes``, exactly
the fields of the contract of :class:`densecap.modeling.meta_arch.DenseCapModel`. Its "detections" are a fixed pyramid of
grid cells over the resized image (1 + 4 + 9 = 14 boxes); each region's caption names the colour
of its mean pixel ("red region", "blue region", ...), its score grows with how saturated that mean
is. So tests can check that boxes land on the right pixels: a box over a red patch of the ORIGINAL
image must be captioned "red region". ``given_boxes`` (original pixels) are captioned in order.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch

from densecap.data.tokenizer import Vocabulary
from densecap.structures import Instances

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 40),
    "white": (245, 245, 245),
    "black": (10, 10, 10),
    "gray": (128, 128, 128),
}


class FakeDenseCapModel(torch.nn.Module):
    def __init__(
        self,
        grids=(1, 2, 3),
        score_thresh: float = 0.0,
        with_image_caption: bool = False,
        caption_template: str = "{colour} region",
    ) -> None:
        super().__init__()
        self.caption_template = caption_template
        self.vocab = Vocabulary(list(COLOURS) + ["region"])
        self.grids = tuple(grids)
        self.score_thresh = score_thresh
        self.beam_size = 1
        self._dummy = torch.nn.Parameter(torch.zeros(1))  # so .to()/.parameters() behave
        self.batch_sizes: List[int] = []
        self.seen_inputs: List[Dict] = []
        # what it produces (densecap.modeling.capabilities)
        self.capabilities = frozenset({"regions"} | ({"image_caption"} if with_image_caption else set()))
        if with_image_caption:
            self.image_caption_head = torch.nn.Identity()

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            raise RuntimeError("FakeDenseCapModel only implements eval mode")
        self.batch_sizes.append(len(batched_inputs))
        self.seen_inputs.extend(batched_inputs)
        return [self._one(inp) for inp in batched_inputs]

    def _one(self, inp: Dict) -> Dict:
        img = inp["image"]
        assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3, img.shape
        hs, ws = int(img.shape[1]), int(img.shape[2])
        scale = float(inp["scale"])
        h0, w0 = int(inp["height"]), int(inp["width"])
        assert abs(hs - h0 * scale) <= 1.0 and abs(ws - w0 * scale) <= 1.0, (hs, ws, h0, w0, scale)
        given = inp.get("given_boxes")
        if given is not None:
            boxes = given.to(torch.float32).reshape(-1, 4).clone()  # M 4 original pixels
        else:
            cells = []
            for g in self.grids:
                for r in range(g):
                    for c in range(g):
                        x1, x2 = ws * c / g, ws * (c + 1) / g
                        y1, y2 = hs * r / g, hs * (r + 1) / g
                        cells.append([x1, y1, x2 - x1, y2 - y1])
            boxes = torch.tensor(cells, dtype=torch.float32) / scale  # N 4 original pixels
        pix = img.permute(1, 2, 0).to(torch.float32)  # H' W' 3
        names = list(COLOURS)
        refs = torch.tensor([COLOURS[n] for n in names], dtype=torch.float32)  # C 3
        means, scores, caps, toks, lps = [], [], [], [], []
        for b in boxes.tolist():
            x1 = int(np.clip(np.floor(b[0] * scale), 0, ws - 1))
            y1 = int(np.clip(np.floor(b[1] * scale), 0, hs - 1))
            x2 = int(np.clip(np.ceil((b[0] + b[2]) * scale), x1 + 1, ws))
            y2 = int(np.clip(np.ceil((b[1] + b[3]) * scale), y1 + 1, hs))
            m = pix[y1:y2, x1:x2].reshape(-1, 3).mean(0)  # 3
            d = ((refs - m) ** 2).sum(1).sqrt()  # C
            k = int(d.argmin())
            sat = float(m.max() - m.min()) / 255.0
            scores.append(1.0 / (1.0 + np.exp(-(6.0 * sat - 2.0))))
            caps.append(self.caption_template.format(colour=names[k]))
            toks.append(self.vocab.encode([names[k], "region"]))
            lps.append(-float(d[k]) / 100.0)
            means.append(m / 255.0)
        n = len(caps)
        scores_t = torch.tensor(scores, dtype=torch.float32).reshape(n)
        codes = torch.zeros((n, 8), dtype=torch.float32)  # N D
        if n:
            codes[:, :3] = torch.stack(means)
            codes[:, 3] = (boxes[:, 0] + boxes[:, 2] / 2) / w0
            codes[:, 4] = (boxes[:, 1] + boxes[:, 3] / 2) / h0
            codes[:, 5] = boxes[:, 2] / w0
            codes[:, 6] = boxes[:, 3] / h0
            codes[:, 7] = scores_t
        tokens = torch.tensor(toks, dtype=torch.int64).reshape(n, 2)  # N T
        logprobs = torch.tensor(lps, dtype=torch.float32).reshape(n)
        if given is None:
            order = sorted(range(n), key=lambda i: (-scores[i], i))
            order = [i for i in order if scores[i] >= self.score_thresh]
            idx = torch.tensor(order, dtype=torch.int64)
            boxes, scores_t, tokens, logprobs, codes = boxes[idx], scores_t[idx], tokens[idx], logprobs[idx], codes[idx]
            caps = [caps[i] for i in order]
        out = {
            "instances": Instances(
                (h0, w0),
                pred_boxes=boxes,
                scores=scores_t,
                pred_captions=caps,
                pred_caption_tokens=tokens,
                pred_caption_logprobs=logprobs,
                region_codes=codes,
            )
        }
        if getattr(self, "image_caption_head", None) is not None:
            out["image_caption"] = f"an image with {caps[0] if caps else 'nothing'}"
            out["image_caption_logprob"] = -1.5
        return out


# ------------------------------------------------------------------------------------------
# a tiny REAL model (densecap.modeling, random weights) saved as a checkpoint
# ------------------------------------------------------------------------------------------
TINY_OPTS = [
    "MODEL.BACKBONE.NAME", "small_cnn", "MODEL.BACKBONE.WIDTH", 8, "MODEL.BACKBONE.NORM", "GN",
    "MODEL.RPN.HEAD_CHANNELS", 16, "MODEL.ROI.FC_DIM", 32,
    "MODEL.CAPTION.EMBED_SIZE", 16, "MODEL.CAPTION.HIDDEN_SIZE", 16, "MODEL.CAPTION.MAX_TOKENS", 6,
    "INPUT.MAX_SIZE", 128, "MODEL.RPN.PRE_NMS_TOPK_TEST", 300, "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
]
TINY_WORDS = "a red green blue yellow circle square triangle small large on of left right".split()


def save_tiny_checkpoint(path: str, seed: int = 0, opts=()):
    """Build the tiny random small_cnn DenseCap model and save it as a checkpoint; returns cfg."""
    from densecap.config import get_cfg
    from densecap.engine.checkpoint import save_checkpoint
    from densecap.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_list(list(TINY_OPTS) + list(opts))
    torch.manual_seed(seed)
    vocab = Vocabulary(TINY_WORDS)
    model = build_model(cfg, vocab)
    save_checkpoint(path, model=model, cfg=cfg, vocab=vocab, iteration=0)
    return cfg
