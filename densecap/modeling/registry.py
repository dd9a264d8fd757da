"""fvcore's ``Registry`` that also accepts an explicit name: ``@REG.register("vgg16")``."""
from __future__ import annotations

from typing import Any, Optional

from fvcore.common.registry import Registry as _FvRegistry

__all__ = ["Registry"]


class Registry(_FvRegistry):
    def register(self, obj: Optional[Any] = None) -> Any:
        if isinstance(obj, str):
            name = obj

            def deco(o: Any) -> Any:
                self._do_register(name, o)
                return o

            return deco
        return super().register(obj)
