"""Lazy submodule import, so a bundle config needs only ``$import common`` to reach ``common.<package>.<module>``."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable


def lazy_submodules(package: str) -> Callable[[str], ModuleType]:
    """A module-level ``__getattr__`` for ``package`` that imports ``package.<name>`` on first access."""

    def __getattr__(name: str) -> ModuleType:
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"{package}.{name}":
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
            raise

    return __getattr__
