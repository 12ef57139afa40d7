"""prepare_batch callables, Ignite handlers, extraction, evaluation and inference drivers."""

from .._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
