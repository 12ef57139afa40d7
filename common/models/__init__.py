"""Composed networks: projection heads, dual-encoder CLIP models, report generator."""


def __getattr__(name: str):
    """Import submodules on first attribute access, so configs can write ``common.models.<module>.<name>``."""
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        raise
