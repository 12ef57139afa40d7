"""Image encoders: frozen HF image encoders, DINOv2 wrappers, CTViT (3D, CT-CLIP compatible)."""


def __getattr__(name: str):
    """Import submodules on first attribute access, so configs can write ``common.vision.<module>.<name>``."""
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        raise
