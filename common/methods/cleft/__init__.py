"""CLEFT (Du et al., MICCAI 2024): CLIP with a LoRA-tuned causal LLM text encoder, then context-prompt tuning."""

from common._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
