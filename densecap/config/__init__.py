"""Configuration: ``get_cfg()`` returns a copy of the defaults (``densecap/config/defaults.py``)."""
from .config import get_cfg, load_config  # noqa: F401
from .defaults import CfgNode  # noqa: F401
