"""Test-time options in one typed object: :class:`InferenceOptions`.

Built from a config (:meth:`InferenceOptions.from_config`), overridden by the caller's values
(:meth:`InferenceOptions.override`: ``None`` keeps the config's value; a bad value is an error
that names the option), turned into the config's ``KEY VALUE`` overrides (:meth:`to_opts`, so a
model built from the config reads them) and pushed onto a built model (:meth:`apply`, through the
attributes the model documents). ``tools/infer.py``'s flags and ``DenseCapPredictor`` keyword
options are these fields.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List

import torch

__all__ = ["InferenceOptions", "CONFIG_KEYS", "options_from_args"]

# option -> the config key it stands for
CONFIG_KEYS: Dict[str, str] = {
    "image_size": "INPUT.MAX_SIZE",
    "rpn_nms": "MODEL.RPN.NMS_THRESH",
    "final_nms": "MODEL.ROI.NMS_THRESH_TEST",
    "pre_nms_proposals": "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "num_proposals": "MODEL.RPN.POST_NMS_TOPK_TEST",
    "beam_size": "TEST.BEAM_SIZE",
    "length_penalty": "TEST.LENGTH_ALPHA",
    "score_thresh": "TEST.SCORE_THRESH",
    "max_detections": "TEST.DETECTIONS_PER_IMAGE",
    "max_tokens": "MODEL.CAPTION.MAX_TOKENS",
    "device": "MODEL.DEVICE",
}

# option -> (type, check, what a valid value is)
_CHECKS = {
    "image_size": (int, lambda v: v >= 16, "an integer >= 16"),
    "rpn_nms": (float, lambda v: 0 < v <= 1, "in (0, 1]"),
    "final_nms": (float, lambda v: 0 < v <= 1, "in (0, 1]"),
    "pre_nms_proposals": (int, lambda v: v >= 1, "an integer >= 1"),
    "num_proposals": (int, lambda v: v >= 1, "an integer >= 1"),
    "beam_size": (int, lambda v: v >= 1, "an integer >= 1"),
    "length_penalty": (float, lambda v: v >= 0, ">= 0"),
    "score_thresh": (float, lambda v: 0 <= v <= 1, "in [0, 1]"),
    "max_detections": (int, lambda v: v >= 0, "an integer >= 0"),
    "max_tokens": (int, lambda v: v >= 1, "an integer >= 1"),
    "device": (str, lambda v: v.split(":")[0] in ("cpu", "cuda"), "cpu or cuda"),
}


@dataclass(frozen=True)
class InferenceOptions:
    """The test-time options of a dense captioning model (defaults: ``densecap/config/defaults.py``).

    image_size         longest image side fed to the model, pixels (INPUT.MAX_SIZE)
    rpn_nms            RPN NMS IoU (MODEL.RPN.NMS_THRESH)
    final_nms          final per-region NMS IoU (MODEL.ROI.NMS_THRESH_TEST)
    pre_nms_proposals  proposals entering the RPN NMS (MODEL.RPN.PRE_NMS_TOPK_TEST)
    num_proposals      proposals kept after it (MODEL.RPN.POST_NMS_TOPK_TEST)
    beam_size          region caption beam size, 1 = greedy (TEST.BEAM_SIZE)
    length_penalty     beam score = logprob / length^alpha (TEST.LENGTH_ALPHA)
    score_thresh       minimum final score of a region (TEST.SCORE_THRESH)
    max_detections     regions per image, 0 = all (TEST.DETECTIONS_PER_IMAGE)
    max_tokens         words per region caption, END not counted (MODEL.CAPTION.MAX_TOKENS)
    device             "cpu" or "cuda[:N]" (MODEL.DEVICE)
    """

    image_size: int = 720
    rpn_nms: float = 0.7
    final_nms: float = 0.3
    pre_nms_proposals: int = 6000
    num_proposals: int = 1000
    beam_size: int = 1
    length_penalty: float = 0.0
    score_thresh: float = 0.0
    max_detections: int = 0
    max_tokens: int = 15
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in CONFIG_KEYS:
            object.__setattr__(self, name, _checked(name, getattr(self, name)))

    @classmethod
    def from_config(cls, cfg) -> "InferenceOptions":
        values = {}
        for name, key in CONFIG_KEYS.items():
            node = cfg
            for part in key.split("."):
                node = node[part]
            values[name] = node
        return cls(**values)

    def override(self, **values: Any) -> "InferenceOptions":
        """A copy with the given options replaced; ``None`` keeps the current value."""
        unknown = set(values) - set(CONFIG_KEYS)
        if unknown:
            raise TypeError(f"unknown inference option(s): {sorted(unknown)} (known: {sorted(CONFIG_KEYS)})")
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    def to_opts(self) -> List[Any]:
        """``KEY VALUE`` config overrides that give a config these options."""
        opts: List[Any] = []
        for name, key in CONFIG_KEYS.items():
            opts += [key, getattr(self, name)]
        return opts

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def apply(self, model: torch.nn.Module) -> None:
        """Push the options onto a built model through the attributes its class documents
        (``model.beam_size``, ``length_alpha``, ``max_caption_len``, ``model.rpn.nms_thresh /
        pre_nms_topk / post_nms_topk``, ``model.roi_heads.nms_thresh / score_thresh /
        detections_per_image``); attributes a model lacks are skipped. ``image_size`` and
        ``device`` belong to the predictor."""

        def setattr_if(obj, name, value):
            if obj is not None and hasattr(obj, name):
                setattr(obj, name, value)

        setattr_if(model, "beam_size", self.beam_size)
        setattr_if(model, "length_alpha", self.length_penalty)
        setattr_if(model, "max_caption_len", self.max_tokens)
        setattr_if(model, "score_thresh", self.score_thresh)
        setattr_if(model, "detections_per_image", self.max_detections)
        rpn = getattr(model, "rpn", None) or getattr(model, "proposal_generator", None)
        setattr_if(rpn, "nms_thresh", self.rpn_nms)
        setattr_if(rpn, "pre_nms_topk", self.pre_nms_proposals)
        setattr_if(rpn, "post_nms_topk", self.num_proposals)
        roi = getattr(model, "roi_heads", None)
        setattr_if(roi, "nms_thresh", self.final_nms)
        setattr_if(roi, "score_thresh", self.score_thresh)
        setattr_if(roi, "detections_per_image", self.max_detections)


def _checked(name: str, value: Any) -> Any:
    kind, ok, what = _CHECKS[name]
    try:
        v = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {what}, got {value!r}") from None
    if not ok(v):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return v


def options_from_args(args) -> Dict[str, Any]:
    """The inference options a parsed command line gives (its attributes named like the fields,
    e.g. ``--rpn-nms`` -> ``rpn_nms``; None = not given), for :meth:`InferenceOptions.override`
    or ``DenseCapPredictor.from_checkpoint(**...)``."""
    return {name: getattr(args, name) for name in CONFIG_KEYS if getattr(args, name, None) is not None}
