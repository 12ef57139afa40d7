"""Package a bundle as a model-zoo style zip with its own copy of ``common/``, so it runs standalone after download.

    python scripts/package_bundle.py frozen_projection [--out dist] [--run <bundle_root of a trained run>]
    python -m monai.bundle download --name frozen_projection --url file://$PWD/dist/frozen_projection_v0.2.0.zip \
        --bundle_dir ./downloaded
    python scripts/package_bundle.py frozen_projection --print-install     # the pip line the zip needs
    cd downloaded/frozen_projection && python -m monai.bundle run --config_file configs/inference.json

The zip holds ``<name>/`` with the bundle's configs, docs, LICENSE and large_files.yml, ``models/model.pt`` of a
trained run (``--run``: the ``bundle_root`` a training ran in, whose ``models/model.pt`` training wrote; or
``--model``: that file itself, or a single-file ``.safetensors`` checkpoint training wrote, e.g. frozen_projection's
and cleft_cxr's ``models/model.safetensors``, converted with its header as the base-model record) with what else
inference reads from that run's ``models/`` folder (``models/tokenizer/``, the tokenizer cleft_cxr's and
report_gen's demo training builds from its reports; never base-model files), and the Python
sources of ``common/`` vendored as the package ``<name>_common``:
every ``common`` import in the vendored code and every ``common.`` reference in the configs is renamed, so two
bundles loaded in one process (as a MONAI Label app does) each import their own copy, never the other's.
Generated or trained files (eval, logs, cache, demo data) and sample data are never packaged.

The zip's copy follows the model zoo's code-format settings (pinned in ``tests/zoo_ci/model_zoo``), whatever the
tree's state: the vendored code is sorted by isort with the zoo's ``setup.cfg`` (the renamed package is
third-party there, as in the zoo) and formatted by black with the zoo's ``pyproject.toml`` and
``--skip-magic-trailing-comma``; the configs pass the zoo's ``pretty-format-json --no-sort-keys --indent=4`` hook;
text files end with one newline. ``scripts/zoo_format.sh`` applies the same to the tree.

The versions in each ``configs/metadata.json`` (``monai_version``, ``pytorch_version``, ``numpy_version``,
``required_packages_version``) must be exactly the pins of ``scripts/constraints.txt``, which ``scripts/setup.sh``
installs: packaging refuses a bundle whose metadata disagrees.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import re
import sys
import tokenize
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO_SETTINGS = ROOT / "tests" / "zoo_ci" / "model_zoo"
CONSTRAINTS = ROOT / "scripts" / "constraints.txt"
BUNDLE_FILES = ("configs", "docs", "LICENSE", "large_files.yml")
VERSION_KEYS = {"monai_version": "monai", "pytorch_version": "torch", "numpy_version": "numpy"}
# packages every bundle's metadata must list: MONAI's CLI runner needs fire
REQUIRED_EVERYWHERE = ("fire",)
# what inference reads from a trained run's ckpt_dir besides model.pt: the tokenizer the bundle's own training built
# from its training reports when no tokenizer_path is given (cleft_cxr's and report_gen's demo); a base model's
# tokenizer is read from its own folder and never copied there, so nothing third-party is carried
RUN_FILES = ("tokenizer",)
# "common" as an import or a dotted reference ("common.x", "import common"), never the English word
_COMMON_REF = re.compile(r"(?<![\w.])common(?=\.[A-Za-z_])|(?<=import )common\b")


def read_pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    """The ``name==version`` pins of the constraints file, by lower-case name."""
    pins = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise ValueError(f"{path}:{number}: expected 'name==version', got {raw!r}")
        pins[name.strip().lower()] = version.strip()
    return pins


def pin_problems(name: str, pins: dict[str, str] | None = None) -> list[str]:
    """Every way bundle ``name``'s metadata versions disagree with the constraints file (empty when they agree)."""
    pins = read_pins() if pins is None else pins
    metadata_file = ROOT / "bundles" / name / "configs" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    problems = []
    for key, package_name in VERSION_KEYS.items():
        if metadata.get(key) != pins.get(package_name):
            problems.append(
                f"{metadata_file}: {key} is {metadata.get(key)!r}, scripts/constraints.txt pins "
                f"{package_name}=={pins.get(package_name)}"
            )
    required = metadata.get("required_packages_version", {})
    for package_name, version in required.items():
        pinned = pins.get(package_name.lower())
        if pinned is None:
            problems.append(
                f"{metadata_file}: required_packages_version names {package_name!r}, which "
                "scripts/constraints.txt does not pin (add the pin there, or drop the package)"
            )
        elif version != pinned:
            problems.append(
                f"{metadata_file}: required_packages_version {package_name}=={version!r}, "
                f"scripts/constraints.txt pins {package_name}=={pinned}"
            )
    for package_name in REQUIRED_EVERYWHERE:
        if package_name not in required:
            problems.append(f"{metadata_file}: required_packages_version lacks {package_name!r}")
    return problems


def requirements(name: str) -> list[str]:
    """The requirement lines the model zoo's ``ci/get_bundle_requirements.py`` derives from the metadata."""
    metadata = json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())
    lines = [f"{package_name}=={metadata[key]}" for key, package_name in VERSION_KEYS.items() if key in metadata]
    lines += [f"{k}=={v}" for k, v in metadata.get("required_packages_version", {}).items()]
    return lines


def install_line(name: str) -> str:
    """The one ``pip install`` command a downloaded zip of bundle ``name`` needs."""
    return "pip install " + " ".join(requirements(name))


def vendored_package(name: str) -> str:
    """The import name of ``common`` inside bundle ``name``'s zip."""
    return f"{name}_common"


def rename_common(text: str, package: str) -> str:
    """``text`` with every import of / dotted reference to ``common`` pointed at ``package``."""
    return _COMMON_REF.sub(package, text)


@functools.lru_cache(maxsize=None)
def zoo_format_python(text: str, package: str) -> str:
    """``text`` as the model zoo's isort (its ``setup.cfg``, ``package`` third-party) and black leave it.

    Cached by ``(text, package)``: a process that packages a bundle again (the tests package each one several
    times) formats only the modules that changed.
    """
    import black
    import isort

    config = isort.Config(settings_file=str(ZOO_SETTINGS / "setup.cfg"), known_third_party=[package])
    mode = black.Mode(
        line_length=120,
        target_versions={black.TargetVersion.PY37, black.TargetVersion.PY38, black.TargetVersion.PY39},
        magic_trailing_comma=False,
    )
    return black.format_str(isort.code(text, config=config), mode=mode)


def zoo_format_json(text: str) -> str:
    """``text`` as the zoo's pre-commit ``pretty-format-json --autofix --no-sort-keys --indent=4`` leaves it."""
    from pre_commit_hooks.pretty_format_json import _get_pretty_format

    return _get_pretty_format(text, indent="    ", sort_keys=False)


def _text_entry(file: Path, package: str) -> str | None:
    """The zip's text of ``file`` (renamed, zoo-formatted, one final newline), or ``None`` for a binary file."""
    try:
        text = file.read_text()
    except UnicodeDecodeError:
        return None
    if file.suffix == ".json" and file.parent.name == "configs":
        return zoo_format_json(rename_common(text, package))
    return text.rstrip("\n") + "\n"


def rename_common_code(code: str, package: str) -> str:
    """Python ``code`` with every name ``common`` (imports, ``common.x`` chains) pointed at ``package``.

    Only code tokens change: docstrings and comments keep naming ``common`` (the tree's name), so no line grows past
    the zoo's flake8 limit; no module of ``common`` has a variable, argument or attribute named ``common``.
    """
    lines = code.splitlines(keepends=True)
    hits, previous = [], None
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        if token.type == tokenize.NAME and token.string == "common" and previous != ".":
            hits.append(token.start)
        if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            previous = token.string
    for row, col in reversed(hits):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + package + line[col + len("common") :]
    return "".join(lines)


def _model_bytes(model: Path) -> bytes:
    """``model`` as the bytes of the model zoo's ``models/model.pt``, as training writes it.

    The network's own flat state dict, its base-model record in the state dict's ``_metadata[""]["base_record"]``
    (tensors and strings, read with ``weights_only=True``): a ``model.pt`` written by training (or in the earlier
    nested form) is checked and written again in this form; a ``.safetensors`` file written by training becomes one,
    its header (the same base-model record) as the record.
    """
    import tempfile

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from common.engines.checkpoint import read_checkpoint_metadata, read_trained_state, save_model_pt

    state, record = read_trained_state(model), read_checkpoint_metadata(model)
    if not state:
        raise ValueError(f"{model}: holds no tensors; pass the models/model.pt (or .safetensors) a training wrote")
    if not record:
        raise ValueError(
            f"{model}: has no base-model record (inference checks it on load); pass the models/model.pt or "
            ".safetensors file a training wrote"
        )
    with tempfile.TemporaryDirectory() as tmp:
        return save_model_pt(state, Path(tmp) / "model.pt", record).read_bytes()


def run_files(model: Path) -> list[tuple[Path, str]]:
    """The files beside ``model`` (its run's ``ckpt_dir``) that inference needs: ``(file, path under models/)``.

    Only the :data:`RUN_FILES` folders the bundle's training wrote there; resume states, per-stage folders, exports
    and the safetensors copies of ``model.pt`` stay behind.
    """
    ckpt_dir = model.parent
    files = []
    for entry in RUN_FILES:
        folder = ckpt_dir / entry
        if folder.is_dir():
            files += [(f, f.relative_to(ckpt_dir).as_posix()) for f in sorted(folder.rglob("*")) if f.is_file()]
    return files


def _run_file_bytes(file: Path) -> bytes:
    """``file`` as shipped: the tokenizer's record (``built_from.json``) without the absolute paths of the machine
    that trained (:func:`common.weights.fingerprint.portable_record`, as for ``model.pt``'s record); others as is."""
    if file.name != "built_from.json":
        return file.read_bytes()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from common.weights.fingerprint import portable_record

    record = json.loads(file.read_text())
    strings = portable_record({k: v for k, v in record.items() if isinstance(v, str)})
    return (json.dumps({**record, **strings}, indent=2, sort_keys=True) + "\n").encode()


def run_model(run: Path) -> Path:
    """The ``models/model.pt`` that training wrote in the run whose ``bundle_root`` is ``run``."""
    model = run / "models" / "model.pt"
    if not model.is_file():
        raise FileNotFoundError(
            f"--run {run}: no {model}; training writes it (report_gen from stage 2: train_stage2.json); pass the "
            "bundle_root the training ran in"
        )
    return model


def package(name: str, out_dir: Path, model: Path | None = None) -> Path:
    """Write ``<out_dir>/<name>_v<version>.zip`` and return its path.

    Args:
        name: a bundle folder under ``bundles/``.
        out_dir: where the zip goes (created when missing).
        model: optional trained state dict, stored as ``<name>/models/model.pt``, with the :func:`run_files`
            beside it (``models/tokenizer/`` where the run's training built one).

    Raises:
        FileNotFoundError: no such bundle, or ``model`` does not exist.
        ValueError: the metadata's versions disagree with ``scripts/constraints.txt``.
    """
    bundle = ROOT / "bundles" / name
    metadata_file = bundle / "configs" / "metadata.json"
    if not metadata_file.is_file():
        raise FileNotFoundError(f"no bundle '{name}': {metadata_file} missing")
    problems = pin_problems(name)
    if problems:
        raise ValueError("metadata versions disagree with scripts/constraints.txt:\n" + "\n".join(problems))
    if model is not None and not model.is_file():
        raise FileNotFoundError(f"--model {model}: no such file")
    version = json.loads(metadata_file.read_text())["version"]
    package_name = vendored_package(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}_v{version}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for entry in BUNDLE_FILES:
            path = bundle / entry
            files = (
                sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
            )
            for file in files:
                arcname = f"{name}/{file.relative_to(bundle)}"
                text = _text_entry(file, package_name)
                if text is None:
                    archive.write(file, arcname)
                else:
                    archive.writestr(arcname, text)
        for file in sorted((ROOT / "common").rglob("*.py")):
            relative = file.relative_to(ROOT / "common")
            code = zoo_format_python(rename_common_code(file.read_text(), package_name), package_name)
            archive.writestr(f"{name}/{package_name}/{relative}", code)
        if model is not None:
            archive.writestr(f"{name}/models/model.pt", _model_bytes(model))
            for file, relative in run_files(model):
                archive.writestr(f"{name}/models/{relative}", _run_file_bytes(file))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", help="bundle names under bundles/")
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--run", type=Path, default=None, help="bundle_root of a trained run: ships its models/model.pt (+ tokenizer/)"
    )
    weights.add_argument(
        "--model", type=Path, default=None, help="the models/model.pt (or .safetensors) a training wrote"
    )
    parser.add_argument("--print-install", action="store_true", help="print the pip line each bundle's zip needs")
    args = parser.parse_args()
    model = args.model if args.run is None else run_model(args.run)
    if model is not None and len(args.names) != 1:
        parser.error("--run / --model belong to one bundle: name exactly one")
    for name in args.names:
        print(install_line(name) if args.print_install else package(name, args.out, model))


if __name__ == "__main__":
    main()
