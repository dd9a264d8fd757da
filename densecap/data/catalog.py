"""Dataset catalog: names -> (prepared directory, split).

Built-in names: ``vg_{train,val,test}`` -> ``DATASETS.ROOT/vg/prepared`` and
``synthetic_{train,val,test}`` -> ``DATASETS.ROOT/synthetic/prepared``. Any name of the form
``PREPARED_DIR:SPLIT`` is accepted directly, and ``regions:PATH.json:IMAGE_ROOT:SPLIT`` names your
own region caption file (Visual Genome or COCO-style layout, ``docs/DATASETS.md``), prepared on
first use into ``DATASETS.ROOT/cache/regions/`` (:mod:`densecap.data.region_captions`).
Projects register more with ``DatasetCatalog.register(name, prepared_dir, split)`` or
:func:`densecap.data.region_captions.register_region_captions`.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Tuple, Union

from .prepared import SPLITS
from .region_captions import REGIONS_PREFIX, parse_regions_name, prepared_region_captions

# lazy entries: (cache root, preparation options) -> (prepared_dir, split)
LazyEntry = Callable[[str, Dict], Tuple[str, str]]


def regions_cache_root(root: str) -> str:
    """Where ``regions:`` datasets are prepared: ``DATASETS.ROOT/cache/regions``."""
    return os.path.join(root, "cache", "regions")


class _DatasetCatalog:
    def __init__(self) -> None:
        self._entries: Dict[str, Union[Tuple[str, str], LazyEntry]] = {}

    def register(self, name: str, prepared_dir: str, split: str) -> None:
        if name in self._entries:
            raise KeyError(f"dataset '{name}' is already registered")
        self._entries[name] = (prepared_dir, split)

    def register_lazy(self, name: str, resolve: LazyEntry) -> None:
        """Register ``name`` as ``resolve(cache_root, options) -> (prepared_dir, split)``, called on
        each use (it prepares the data the first time)."""
        if name in self._entries:
            raise KeyError(f"dataset '{name}' is already registered")
        self._entries[name] = resolve

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self):
        return sorted(self._entries)

    def resolve(self, name: str, root: Optional[str] = None, *, max_tokens: int = 15,
                min_token_count: int = 15) -> Tuple[str, str]:
        """(prepared_dir, split) of a dataset name. ``max_tokens`` / ``min_token_count``: how a
        region caption file is prepared (``DATASETS.REGIONS_*``)."""
        root = root if root is not None else "datasets"
        options = {"max_tokens": int(max_tokens), "min_token_count": int(min_token_count)}
        if name in self._entries:
            entry = self._entries[name]
            return entry(regions_cache_root(root), options) if callable(entry) else entry
        if name.startswith(REGIONS_PREFIX):
            path, image_root, split = parse_regions_name(name)
            return prepared_region_captions(path, image_root, cache_root=regions_cache_root(root), **options), split
        for prefix, sub in (("vg_", "vg/prepared"), ("synthetic_", "synthetic/prepared")):
            if name.startswith(prefix) and name[len(prefix):] in SPLITS:
                return os.path.join(root, sub), name[len(prefix):]
        if ":" in name:
            d, split = name.rsplit(":", 1)
            return d, split
        raise KeyError(
            f"dataset '{name}' is not registered; known: {self.names() + ['vg_*', 'synthetic_*']} "
            f"or use 'PREPARED_DIR:SPLIT' or 'regions:PATH.json:IMAGE_ROOT:SPLIT'"
        )


DatasetCatalog = _DatasetCatalog()
