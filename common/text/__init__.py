"""Text encoders: frozen sentence encoders, causal-LLM sentence encoder, BERT encoder."""


def __getattr__(name: str):
    """Import submodules on first attribute access, so configs can write ``common.text.<module>.<name>``."""
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        raise
