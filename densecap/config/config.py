from __future__ import annotations

import logging
import os
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
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"{config_file}: config file not found")
        try:
            cfg.merge_from_file(config_file, allow_unsafe=False)
        except (KeyError, AssertionError) as e:
            raise KeyError(f"{config_file}: {_msg(e)}") from None
    if opts:
        opts = list(opts)
        if len(opts) % 2 != 0:
            raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd number: {opts}")
        try:
            cfg.merge_from_list(opts)
        except (KeyError, AssertionError) as e:
            raise KeyError(f"command-line override: {_msg(e)}") from None
    return cfg


def _msg(e: BaseException) -> str:
    text = e.args[0] if e.args else str(e)
    return str(text).replace("Non-existent key", "unknown config key").replace(
        "Non-existent config key", "unknown config key")
