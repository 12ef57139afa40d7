"""CT-CLIP (Hamamci et al.) with LoRA in the attention of both encoders; zero-shot chest-CT classification."""

from common._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
