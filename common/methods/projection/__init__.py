"""Frozen foundation-model embeddings cached once, small projection heads trained contrastively (arXiv 2502.02048)."""

from common._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
