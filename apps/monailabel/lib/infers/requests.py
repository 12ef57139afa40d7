"""What each bundle's inference needs from one request, and what it writes: its own overrides, never a copy.

Each adapter turns (image path, request params, a scratch folder) into the ``monai.bundle run`` overrides the bundle's
docs use for one file (``input_files`` / a one-row manifest, ``output_dir``, the class list), and reads back the file
the bundle's own writer wrote. The MONAI Label request dict itself never reaches the bundle's transforms: the
bundle's dataset builds ``{"image": path}`` from ``input_files``, so MONAI Label's ``image_path`` string (a key MONAI
1.6 takes for a metadata dict) is left behind.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.methods.ctclip.zero_shot import ZeroShotIteration


class RequestError(ValueError):
    """A request the task cannot serve (the server answers 422 with this message)."""


def class_list(params: Mapping[str, Any], key: str = "class_names") -> list[str] | None:
    """The request's class list: a JSON list or a comma-separated string; None when absent.

    Raises:
        RequestError: an empty list, a non-string or blank name, or a name given twice.
    """
    if key not in params or params[key] is None:
        return None
    value = params[key]
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names):
        raise RequestError(f"'{key}' must be a non-empty list of non-empty strings, got {value!r}")
    if not names:
        raise RequestError(f"'{key}' is empty: give at least one class name")
    seen = set()
    duplicated = sorted({n for n in names if n in seen or seen.add(n)})
    if duplicated:
        raise RequestError(f"'{key}' names {duplicated} more than once: each class once")
    return list(names)


def single_file(path: str, suffixes: Sequence[str]) -> str:
    """``path`` itself, or the one image file inside a folder (a DICOM instance downloaded from a PACS)."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
    if len(files) != 1:
        raise RequestError(f"{path} holds {len(files)} image files ({', '.join(suffixes)}); send one image")
    return str(files[0])


def one_row_manifest(path: str, suffixes: Sequence[str], scratch: Path) -> Path:
    """A manifest of the request's one image (``id``: its file name), for bundles whose inference reads a manifest."""
    manifest = scratch / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows([["id", "image"], [Path(path).name, single_file(path, suffixes)]])
    return manifest


class BundleRequest:
    """Defaults of a request adapter: what is kept warm, the image types, and no per-request objects to reuse."""

    warm: tuple[str, ...] = ("device", "network")
    suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm")  # a radiograph: PNG/JPG or one DICOM file

    def objects(self, overrides: Mapping[str, Any], default_names: Sequence[str]) -> dict[str, Any]:
        """Objects built by an earlier request to put into this request's parser (none by default)."""
        return {}

    def remember(self, parser, overrides: Mapping[str, Any], default_names: Sequence[str]) -> None:
        """Keep what this request built for later ones (nothing by default)."""


class CachedPromptIteration(ZeroShotIteration):
    """The bundle's zero-shot iteration, encoding its prompts once: the served model's weights never change, so the
    prompt latents of a class list are kept for every later request with that list (equal to re-encoding them)."""

    def encode_prompts(self, model, device):
        """(2K, E) prompt latents, encoded on the first call only."""
        if getattr(self, "_cached_prompts", None) is None:
            self._cached_prompts = super().encode_prompts(model, device)
        return self._cached_prompts


class CTCLIPRequest(BundleRequest):
    """ctclip_lora: a CT volume (NIfTI file or DICOM series folder) -> P(present) per pathology."""

    warm = ("device", "network", "tokenizer")
    max_cached_class_lists = 16

    def __init__(self) -> None:
        self._iterations: dict[tuple[str, ...], Any] = {}

    def overrides(self, path: str, params: Mapping[str, Any], scratch: Path) -> dict[str, Any]:
        names = class_list(params)
        out = {"input_files": [path], "output_dir": str(scratch), "iteration#_target_": CachedPromptIteration}
        if names is not None:
            out["class_names"] = names
        return out

    def objects(self, overrides: Mapping[str, Any], default_names: Sequence[str]) -> dict[str, Any]:
        """The cached iteration (its prompt latents) of this request's class list, when there is one."""
        key = tuple(overrides.get("class_names", default_names))
        return {"iteration": self._iterations[key]} if key in self._iterations else {}

    def remember(self, parser, overrides: Mapping[str, Any], default_names: Sequence[str]) -> None:
        key = tuple(overrides.get("class_names", default_names))
        if key not in self._iterations and len(self._iterations) < self.max_cached_class_lists:
            self._iterations[key] = parser.get_parsed_content("iteration")

    def read(self, scratch: Path) -> dict[str, Any]:
        files = sorted(scratch.glob("*_zero_shot.json"))
        if len(files) != 1:
            raise RuntimeError(f"ctclip_lora inference wrote {len(files)} result files in {scratch}, expected 1")
        return json.loads(files[0].read_text())


class CLEFTRequest(BundleRequest):
    """cleft_cxr: a chest X-ray (PNG/JPG or one DICOM file) -> class probabilities for the label set."""

    def overrides(self, path: str, params: Mapping[str, Any], scratch: Path) -> dict[str, Any]:
        out = {"input_files": [single_file(path, self.suffixes)], "output_path": str(scratch / "predictions.json")}
        names = class_list(params)
        if names is not None:
            out["label_set"] = names
        return out

    def read(self, scratch: Path) -> dict[str, Any]:
        record = json.loads((scratch / "predictions.json").read_text())
        return {"class_names": record["class_names"], **record["predictions"][0]}


class ReportGenRequest(BundleRequest):
    """report_gen: a chest X-ray -> a draft report, with the generation settings of the bundle's config."""

    warm = ("device", "network", "tokenizer")

    def overrides(self, path: str, params: Mapping[str, Any], scratch: Path) -> dict[str, Any]:
        manifest = one_row_manifest(path, self.suffixes, scratch)
        return {"dataset_dir": str(scratch), "manifest": str(manifest), "inference_split": None,
                "output_dir": str(scratch), "output_prefix": "inference"}  # fmt: skip

    def read(self, scratch: Path) -> dict[str, Any]:
        lines = [json.loads(line) for line in (scratch / "inference.jsonl").read_text().splitlines() if line.strip()]
        return lines[0]


def top_k(params: Mapping[str, Any], key: str = "retrieval_top_k") -> int | None:
    """The request's number of neighbours (a positive integer); None when absent.

    Raises:
        RequestError: not an integer, or below 1.
    """
    if params.get(key) is None:
        return None
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise RequestError(f"'{key}' must be a positive integer, got {value!r}")
    if int(value) < 1:
        raise RequestError(f"'{key}' must be at least 1, got {value!r}")
    return int(value)


class ProjectionRequest(BundleRequest):
    """frozen_projection: an image -> the reports of the retrieval manifest nearest to its projected embedding
    (the bundle's ``retrieval_manifest``, given at start-up; ``params.retrieval_top_k`` changes the count)."""

    # the frozen encoders are built per request, after the bundle's set_determinism (a config-built encoder's
    # random weights depend on it, and the checkpoint's base record checks them)
    warm = ("device", "network")

    def overrides(self, path: str, params: Mapping[str, Any], scratch: Path) -> dict[str, Any]:
        manifest = one_row_manifest(path, self.suffixes, scratch)
        out: dict[str, Any] = {"input_manifest": str(manifest), "output_dir": str(scratch)}
        k = top_k(params)
        if k is not None:
            out["retrieval_top_k"] = k
        return out

    def read(self, scratch: Path) -> dict[str, Any]:
        path = scratch / "retrieval.json"
        if not path.is_file():
            raise RuntimeError(f"frozen_projection inference wrote no {path.name}: is retrieval_manifest set?")
        record = json.loads(path.read_text())
        return {"retrieval_manifest": record["retrieval_manifest"], "top_k": record["top_k"], **record["results"][0]}


ADAPTERS = {
    "ctclip_lora": CTCLIPRequest,
    "cleft_cxr": CLEFTRequest,
    "report_gen": ReportGenRequest,
    "frozen_projection": ProjectionRequest,
}
