"""Image encoders: frozen HF image encoders, DINOv2 wrappers, CTViT (3D, CT-CLIP compatible)."""

from common._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
