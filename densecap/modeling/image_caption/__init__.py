"""Whole-image caption heads: Show and Tell (``nic``) and Show, Attend and Tell (``sat_soft``,
``sat_hard``). See :class:`ImageCaptionHead` for the API."""
from .base import ImageCaptionHead, teacher_forcing_io  # noqa: F401
from .build import IMAGE_CAPTION_HEAD_REGISTRY, build_image_caption_head  # noqa: F401
from .nic import NICHead  # noqa: F401
from .sat import SATHead  # noqa: F401
