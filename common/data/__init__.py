"""Manifests, image loading, report cleaning, embedding cache, synthetic demo data."""

from .._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
