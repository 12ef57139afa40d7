"""LoRA application (PEFT), learnable context prompts, soft visual prompts."""

from common._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
