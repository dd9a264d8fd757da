from __future__ import annotations

import logging
from typing import Optional, Sequence

from .defaults import CfgNode, _C

logger = logging.getLogger(__name__)


def get_cfg() -> CfgNode:
    """A fresh copy of the default config."""
    return _C.clone()


def load_config(config_file: Optional[str] = None, opts: Optional[Sequence[str]] = None) -> CfgNode:
    """Defaults, then ``config_file`` (with ``_BASE_`` chain), then ``KEY VALUE`` overrides.

    Unknown keys raise ``KeyError`` naming the key (fvcore's "Non-existent config key: X").
    """
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file, allow_unsafe=False)
    if opts:
        opts = list(opts)
        if len(opts) % 2 != 0:
            raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd number: {opts}")
        cfg.merge_from_list(opts)
    return cfg
