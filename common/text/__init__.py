"""Text encoders: frozen sentence encoders, causal-LLM sentence encoder, BERT encoder."""

from common._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
