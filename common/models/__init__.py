"""Composed networks: projection heads, dual-encoder CLIP models, report generator."""

from .._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
