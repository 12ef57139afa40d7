"""Classification, retrieval, zero-shot and report-generation metrics."""

from .._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
