"""What every method uses: the checkpoint handler, prepare_batch, the gradient cache, cross-rank gathers, writers."""

from common._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
