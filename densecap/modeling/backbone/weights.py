"""ImageNet initialisation without downloads (``MODEL.BACKBONE.WEIGHTS``).

A value is either a torchvision weight enum name (``"VGG16_Weights.IMAGENET1K_V1"``,
``"ResNet50_Weights.IMAGENET1K_V2"``), resolved to the file torchvision would have downloaded in
the local torch hub cache (``<torch.hub.get_dir()>/checkpoints/<file>``), or a path to a local
``.pth`` state dict (a dict holding it under ``"model"`` or ``"state_dict"`` works too).
Nothing is ever downloaded: a missing file is an error saying where to put it.
"""
from __future__ import annotations

import logging
import os
from typing import Dict

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["resolve_weights", "load_backbone_weights"]


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or spec.endswith((".pth", ".pt", ".pkl", ".bin")) or os.path.exists(spec)


def resolve_weights(spec: str) -> Dict[str, Tensor]:
    """The state dict named by ``spec`` (see the module docstring)."""
    if _looks_like_path(spec):
        path = os.path.expanduser(spec)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"MODEL.BACKBONE.WEIGHTS: no such file: {path}")
    else:
        from torchvision.models import get_weight

        try:
            enum = get_weight(spec)
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(
                f"MODEL.BACKBONE.WEIGHTS={spec!r} is neither a file nor a torchvision weight name "
                f"such as 'VGG16_Weights.IMAGENET1K_V1' ({e})"
            ) from e
        fname = os.path.basename(enum.url)
        path = os.path.join(torch.hub.get_dir(), "checkpoints", fname)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"MODEL.BACKBONE.WEIGHTS={spec!r}: {path} not found and nothing is downloaded at run "
                f"time. Put the file {fname} (from {enum.url}) at that path, or set "
                f"MODEL.BACKBONE.WEIGHTS to a local .pth file (empty = random initialisation)."
            )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    logger.info("backbone weights from %s", path)
    return obj


def load_backbone_weights(module: nn.Module, spec, prefix: str = "") -> Dict[str, Tensor]:
    """Load ``spec`` (a WEIGHTS string or an already loaded state dict) into ``module``.

    Only keys starting with ``prefix`` are used (the prefix is stripped). Keys that do not exist
    in ``module`` are ignored (e.g. a classifier), missing ones keep their initialisation; both
    are logged; a file that matches no key at all is an error. Returns the full state dict.
    """
    state = resolve_weights(spec) if isinstance(spec, str) else spec
    own = module.state_dict()
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    usable = {k: v for k, v in sub.items() if k in own and own[k].shape == v.shape}
    bad_shape = [k for k, v in sub.items() if k in own and own[k].shape != v.shape]
    if not usable:
        raise ValueError(f"MODEL.BACKBONE.WEIGHTS: no parameter matches the backbone (prefix {prefix!r})")
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    module.load_state_dict(usable, strict=False)
    if bad_shape:
        logger.warning("backbone weights: %d tensors with the wrong shape ignored: %s", len(bad_shape), bad_shape[:5])
    if missing:
        logger.info("backbone weights: %d tensors not in the file keep their initialisation: %s", len(missing), missing[:5])
    logger.info("backbone weights: loaded %d tensors", len(usable))
    return state
