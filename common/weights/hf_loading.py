"""Load a Hugging Face ``transformers`` model from a local folder, or build the same architecture from a config.

No model hub is reached: a non-empty path must be a local folder (``local_files_only=True``); an empty path
builds the architecture from a config dict with random weights (tiny models in tests and demos).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)

__all__ = ["check_local_model_dir", "build_config", "load_or_build_model", "load_tokenizer"]


def check_local_model_dir(path: str | Path, key: str = "model_path") -> Path:
    """Return ``path`` as a folder that holds a ``config.json``, or raise an error naming the config ``key``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{key}={str(path)!r} is not a local folder. Models are loaded from local Hugging Face folders only "
            f"(no hub download); set {key} to a folder with config.json and weights, or leave it empty to build "
            "the architecture from its config with random weights."
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{key}={str(folder)!r} has no config.json: not a Hugging Face model folder")
    return folder


def build_config(config: Mapping[str, Any] | PretrainedConfig) -> PretrainedConfig:
    """Turn ``{"model_type": "bert", "hidden_size": 32, ...}`` into the matching ``PretrainedConfig``."""
    if isinstance(config, PretrainedConfig):
        return config
    if "model_type" not in config:
        raise ValueError(
            f"a model config needs a 'model_type' field (e.g. 'bert', 'gpt2', 'dinov2'); got keys {sorted(config)}"
        )
    kwargs = dict(config)
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def load_or_build_model(
    model_path: str | Path | None,
    config: Mapping[str, Any] | PretrainedConfig | None = None,
    auto_class: type = AutoModel,
    key: str = "model_path",
    init_seed: int = 0,
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """Load pretrained weights from ``model_path`` when given, else build from ``config`` with random weights.

    Args:
        model_path: local Hugging Face folder, or empty/None to build from ``config``.
        config: architecture config (dict with ``model_type`` or a ``PretrainedConfig``), used when no path is given.
        auto_class: ``AutoModel``, ``AutoModelForCausalLM``, ...
        key: the config key that holds the path, named in errors.
        init_seed: seed of the random initialisation when building from ``config``, so a frozen random encoder
            (demos) is rebuilt bit-identical at evaluation and inference time.
        from_pretrained_kwargs: passed to ``from_pretrained`` (``torch_dtype``, ``attn_implementation``, ...).
    """
    if model_path:
        folder = check_local_model_dir(model_path, key)
        logger.info("loading %s from %s", auto_class.__name__, folder)
        return auto_class.from_pretrained(str(folder), local_files_only=True, **from_pretrained_kwargs)
    if config is None:
        raise ValueError(f"{key} is empty and no architecture config was given: one of them is needed")
    logger.info(
        "building %s from config with random weights (seed %d; no pretrained weights in %s)",
        auto_class.__name__,
        init_seed,
        key,
    )
    with torch.random.fork_rng(devices=[]):  # the same config always gives the same weights, whatever the global RNG
        torch.manual_seed(init_seed)
        return auto_class.from_config(build_config(config))


def load_tokenizer(tokenizer_path: str | Path, key: str = "tokenizer_path", **kwargs: Any):
    """Load a tokenizer from a local folder (``tokenizer.json`` / ``vocab.txt`` ...), never from the hub."""
    folder = Path(tokenizer_path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{key}={str(tokenizer_path)!r} is not a local tokenizer folder")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **kwargs)
