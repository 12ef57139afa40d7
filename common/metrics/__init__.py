"""Classification, retrieval, zero-shot and report-generation metrics."""

from common._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
