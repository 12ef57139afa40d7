"""Load a Hugging Face ``transformers`` model from a local folder, or build the same architecture from a config.

No model hub is reached: a non-empty path must be a local folder (``local_files_only=True``); an empty path
builds the architecture from a config dict with random weights (tiny models in tests and demos). A folder's own
Python is never run: every load passes ``trust_remote_code=False`` (without it, a folder whose config has an
``auto_map`` makes transformers prompt ``[y/N]`` and, on ``y``, run that code), and a folder that cannot load
without its code is refused with :class:`RemoteCodeRefused`.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)

__all__ = [
    "RemoteCodeRefused",
    "check_local_model_dir",
    "build_config",
    "load_or_build_model",
    "load_tokenizer",
    "enable_activation_checkpointing",
]


class RemoteCodeRefused(ValueError):
    """A model / tokenizer folder that transformers can only load by running the folder's own Python."""


def _auto_map(folder: Path) -> dict[str, str]:
    """``{file name: auto_map}`` of the folder's JSON configs that name custom code."""
    found = {}
    for name in ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
        try:
            auto_map = json.loads((folder / name).read_text()).get("auto_map")
        except (OSError, ValueError, AttributeError):
            continue
        if auto_map:
            found[name] = auto_map
    return found


@contextmanager
def _no_remote_code(folder: Path, key: str, what: str) -> Iterator[None]:
    """Turn transformers' 'pass trust_remote_code=True' refusal into one that says why we will not."""
    try:
        yield
    except ValueError as err:
        if "trust_remote_code" not in str(err) and "custom code" not in str(err):
            raise
        raise RemoteCodeRefused(
            f"{key}={str(folder)!r}: this {what} folder can only be loaded by running its own Python code "
            f"(auto_map {_auto_map(folder)}); code from model folders is never run (trust_remote_code=False). "
            "Use a folder whose model_type / tokenizer_class is a transformers architecture (convert the weights), "
            "or remove auto_map if the architecture is a standard one."
        ) from None


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
        if _auto_map(folder):
            logger.warning("%s=%s names custom code (auto_map): ignored, loading the transformers class", key, folder)
        with _no_remote_code(folder, key, "model"):
            return auto_class.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False, **from_pretrained_kwargs
            )
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
    with _no_remote_code(folder, key, "tokenizer"):
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False, **kwargs)


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in backward (non-reentrant), under either name transformers 5.x has given the switch.

    Later 5.x releases call it ``activation_checkpointing_enable``; earlier ones, including 5.20 (the last with
    Python 3.10 wheels, which the model zoo's CI uses), ``gradient_checkpointing_enable``.
    """
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
