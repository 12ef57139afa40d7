"""The one place where the app reads a bundle's configs: the files it merges, the overrides it was started with,
and a fresh parser per request that reuses the warm (already built) objects.

A bundle's inference is exactly ``python -m monai.bundle run --config_file "[<files>]" <overrides>``: MONAI's
``ConfigParser`` merges the files in order, applies the overrides, and the request's own values (input files, an
output folder, a class list) are overrides too. Only the objects named ``warm`` (the network and what it is built
from) are built once per task and put into each request's parser as ready objects.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

REPO_ROOT = Path(__file__).resolve().parents[3]

# The config files of each bundle's inference, in overlay order: what its docs' inference command merges (every
# bundle's inference.json is standalone, as MONAI Label and MONAI Deploy load it).
INFERENCE_CONFIGS: dict[str, tuple[str, ...]] = {
    "ctclip_lora": ("inference.json",),
    "cleft_cxr": ("inference.json",),
    "report_gen": ("inference.json",),
    "frozen_projection": ("inference.json",),
}


def parse_override(value: Any) -> Any:
    """A ``--conf`` value as ``monai.bundle run`` (through Fire) reads a command-line value: a Python literal when
    it is one (``2``, ``true``, ``['a','b']``), else the string itself."""
    if not isinstance(value, str):
        return value
    text = {"true": "True", "false": "False", "null": "None"}.get(value.strip().lower(), value)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return value


def bundle_overrides(conf: Mapping[str, str], bundle: str) -> tuple[list[str], dict[str, Any]]:
    """The extra config files and the overrides the app was started with for ``bundle``.

    ``--conf <bundle>.configs demo.json`` (comma-separated) adds config files of the bundle after its inference
    files (e.g. ``demo.json`` for the demo models); every other ``--conf <bundle>.<key> <value>`` is the override
    ``--<key> <value>`` of ``monai.bundle run`` (e.g. ``ctclip_lora.bundle_root``, ``ctclip_lora.pretrained_path``).
    """
    prefix = f"{bundle}."
    extra: list[str] = []
    overrides: dict[str, Any] = {}
    for key, value in conf.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name == "configs":
            extra = [c.strip() for c in str(value).split(",") if c.strip()]
        else:
            overrides[name] = parse_override(value)
    return extra, overrides


def config_files(bundle: str, extra: Sequence[str] = ()) -> list[str]:
    """Absolute paths of ``bundle``'s inference config files plus ``extra`` (names in its ``configs/`` folder)."""
    folder = REPO_ROOT / "bundles" / bundle / "configs"
    files = [folder / name for name in (*INFERENCE_CONFIGS[bundle], *extra)]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{bundle}: config file {path} does not exist (check --conf {bundle}.configs)")
    return [str(p) for p in files]


def load_parser(files: Sequence[str], overrides: Mapping[str, Any]) -> ConfigParser:
    """A parser as ``monai.bundle run`` builds it: the files merged in order, then the overrides."""
    parser = ConfigParser()
    parser.read_config(list(files))
    parser.update(dict(overrides))
    return parser


class BundleConfig:
    """A bundle's merged inference config, its warm objects, and a fresh parser per request.

    Args:
        bundle: the folder under ``bundles/``.
        extra: config files added after the inference files (``demo.json``).
        overrides: the start-up overrides (``bundle_root``, ``pretrained_path``, model folders, ...).
        warm: config ids built once (in this order) and reused by every request (e.g. ``["network"]``).
    """

    def __init__(self, bundle: str, extra: Sequence[str], overrides: Mapping[str, Any], warm: Sequence[str]) -> None:
        self.bundle = bundle
        self.files = config_files(bundle, extra)
        self.overrides = dict(overrides)
        self.warm_ids = list(warm)
        self._base = load_parser(self.files, self.overrides)
        self._warm: dict[str, Any] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        """A resolved value of the start-up config (not per request), e.g. ``class_names``."""
        return self._base.get_parsed_content(key, default=default)

    def warm(self) -> dict[str, Any]:
        """The warm objects, built on first use (the network is built once per task)."""
        if self._warm is None:
            self._warm = {key: self._base.get_parsed_content(key) for key in self.warm_ids}
        return self._warm

    def request_parser(self, request_overrides: Mapping[str, Any], objects: Mapping[str, Any] = ()) -> ConfigParser:
        """A new parser of the same merged config, with the request's overrides and the warm objects in place."""
        parser = ConfigParser(copy.deepcopy(self._base.get()))
        parser.update(dict(request_overrides))
        for key, value in {**self.warm(), **dict(objects)}.items():
            parser[key] = value
        return parser


def run_workflow(parser: ConfigParser) -> None:
    """``initialize``, ``run`` and ``finalize`` of a bundle config, the sections ``monai.bundle run`` executes."""
    for section in ("initialize", "run", "finalize"):
        if section in parser:
            parser.get_parsed_content(section)
