"""Shared library of the medical vision-language MONAI Bundles.

Leaves: ``data``, ``text``, ``vision``, ``peft``, ``losses``, ``metrics``, ``weights``; ``models`` composes them;
``engines`` drives models; the bundles under ``bundles/`` wire everything in JSON.
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    """Import submodules on first attribute access, so configs can write ``common.<package>.<module>.<name>``."""
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        raise
