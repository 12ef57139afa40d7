"""Report generation: vision features projected into a causal LLM as soft visual prompts, two-stage fine-tuning."""

from common._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
