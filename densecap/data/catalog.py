"""Dataset catalog: names -> (prepared directory, split).

Built-in names: ``vg_{train,val,test}`` -> ``DATASETS.ROOT/vg/prepared`` and
``synthetic_{train,val,test}`` -> ``DATASETS.ROOT/synthetic/prepared``. Any name of the form
``PREPARED_DIR:SPLIT`` is accepted directly. Projects register more with
``DatasetCatalog.register(name, prepared_dir, split)``.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

from .prepared import SPLITS


class _DatasetCatalog:
    def __init__(self) -> None:
        self._entries: Dict[str, Tuple[str, str]] = {}

    def register(self, name: str, prepared_dir: str, split: str) -> None:
        if name in self._entries:
            raise KeyError(f"dataset '{name}' is already registered")
        self._entries[name] = (prepared_dir, split)

    def names(self):
        return sorted(self._entries)

    def resolve(self, name: str, root: Optional[str] = None) -> Tuple[str, str]:
        """(prepared_dir, split) of a dataset name."""
        if name in self._entries:
            return self._entries[name]
        root = root if root is not None else "datasets"
        for prefix, sub in (("vg_", "vg/prepared"), ("synthetic_", "synthetic/prepared")):
            if name.startswith(prefix) and name[len(prefix):] in SPLITS:
                return os.path.join(root, sub), name[len(prefix):]
        if ":" in name:
            d, split = name.rsplit(":", 1)
            return d, split
        raise KeyError(
            f"dataset '{name}' is not registered; known: {self.names() + ['vg_*', 'synthetic_*']} "
            f"or use 'PREPARED_DIR:SPLIT'"
        )


DatasetCatalog = _DatasetCatalog()
