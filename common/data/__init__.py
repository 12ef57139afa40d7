"""Manifests, image loading, report cleaning, embedding cache, synthetic demo data."""

from common._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
