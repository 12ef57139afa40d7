"""Loading real checkpoints safely: HF folders, official checkpoints, fingerprints."""

from common._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
