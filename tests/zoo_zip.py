"""Bundle zips as the model zoo and a user get them: packaged by ``scripts/package_bundle.py``, fetched with
``python -m monai.bundle download --url file://...``, run from the downloaded folder, checked by the zoo's CI.

Shared by ``tests/zoo_ci/`` (importable because ``tests/`` holds the root conftest).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

from bundle_runner import REPO_ROOT, run_bundle, run_command

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from package_bundle import package, read_pins, requirements, vendored_package  # noqa: E402, F401

BUNDLES = ("cleft_cxr", "ctclip_lora", "frozen_projection", "report_gen")
ZOO_CHECKS = REPO_ROOT / "tests" / "zoo_ci" / "run_zoo_checks.py"
# a small, fast demo per bundle: enough rows for every split, one epoch; cleft_cxr's batch of 32 needs more train
# rows than 40 samples give (28; 14 per rank on two), so its batch is 8
DEMO = {name: ("--demo_num_samples", "40", "--num_epochs", "1") for name in BUNDLES}
DEMO["cleft_cxr"] += ("--batch_size", "8")
# the training runs that write models/model.pt: report_gen writes it from stage 2 (which starts from stage 1)
TRAIN_RUNS = {name: (("train", "demo"),) for name in BUNDLES}
TRAIN_RUNS["report_gen"] = (("train", "demo"), ("train", "train_stage2", "demo"))
# overlay order of each bundle's multi-GPU demo, as its own DDP test runs it
DIST_CONFIGS = {
    "cleft_cxr": ("train", "multi_gpu_train", "demo"),
    "ctclip_lora": ("train", "demo", "multi_gpu_train"),
    "frozen_projection": ("train", "multi_gpu_train", "demo"),
    "report_gen": ("train", "demo", "multi_gpu_train"),
}
# where each bundle's inference.json writes (relative to bundle_root, its output_dir default)
INFERENCE_OUTPUT = {
    "cleft_cxr": "eval",
    "ctclip_lora": "eval/inference",
    "frozen_projection": "eval/inference",
    "report_gen": "eval",
}


def download(name: str, archive: Path, bundle_dir: Path) -> Path:
    """``monai.bundle download`` of ``archive`` (a file:// URL) into ``bundle_dir``; the bundle folder."""
    run_command(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "download",
            "--name",
            name,
            "--url",
            archive.as_uri(),
            "--bundle_dir",
            str(bundle_dir),
        ],
        cwd=bundle_dir.parent,
    )
    return bundle_dir / name


def packaged(name: str, tmp_path: Path, model: Path | None = None, tag: str = "zip") -> Path:
    """Package bundle ``name`` (with ``model`` as models/model.pt when given) and download it; the bundle folder."""
    archive = package(name, tmp_path / f"dist_{tag}", model=model)
    return download(name, archive, tmp_path / f"downloaded_{tag}")


def run_in_bundle(bundle: Path, configs: tuple[str, ...], *overrides: str, launcher: tuple[str, ...] = ()):
    """``python -m monai.bundle run`` inside a downloaded bundle folder (its vendored code; ``bundle_root`` ``.``)."""
    files = ",".join(f"'configs/{c}.json'" for c in configs)
    args = [sys.executable, *launcher, "-m", "monai.bundle", "run", "--config_file", f"[{files}]", *overrides]
    return run_command(args, cwd=bundle)


def train_demo(bundle: Path, name: str) -> Path:
    """The demo training runs of bundle ``name`` inside its downloaded folder; the ``models/model.pt`` they wrote."""
    for configs in TRAIN_RUNS[name]:
        run_in_bundle(bundle, configs, *DEMO[name])
    return bundle / "models" / "model.pt"


def zoo_checks(models: Path, name: str, *modes: str, repository_form: bool = False) -> str:
    """The zoo's ``verify_bundle.py`` in each mode on ``models/<name>``; its output."""
    out = []
    for mode in modes:
        args = [sys.executable, str(ZOO_CHECKS), "--models", str(models), "--bundle", name, "--mode", mode]
        out.append(run_command(args + (["--repository-form"] if repository_form else []), cwd=models).stdout)
    return "\n".join(out)


def inference_inputs(name: str, data: Path) -> tuple[tuple[str, ...], list[str]]:
    """The overrides that point bundle ``name``'s demo inference at ``data`` (a demo run's ``demo_data``, so the
    demo overlay generates none), and the ids inference must write a prediction for, one per input row.

    cleft_cxr: every image of ``images/`` (ids: the paths); ctclip_lora: two volumes (ids: file stems);
    frozen_projection: every manifest row; report_gen: the manifest's test rows (ids: image stems).
    """
    rows = list(csv.DictReader((data / "manifest.csv").open()))
    if name == "cleft_cxr":
        return ("--dataset_dir", str(data)), sorted(str(f) for f in (data / "images").iterdir())
    if name == "ctclip_lora":
        volumes = [str(data / Path(row["image"])) for row in rows[:2]]
        overrides = ("--manifest", str(data / "manifest.csv"), "--input_files", json.dumps(volumes))
        return overrides, [Path(v).name.split(".")[0] for v in volumes]
    overrides = ("--manifest", str(data / "manifest.csv"), "--dataset_dir", str(data))
    if name == "report_gen":
        rows = [row for row in rows if row["split"] == "test"]
        overrides += ("--inference_split", "test")
    return overrides, [Path(row["image"]).stem for row in rows]


def infer_in_bundle(bundle: Path, name: str, data: Path) -> Path:
    """``inference.json`` with the demo overlay (the tiny demo architectures) inside a downloaded bundle folder,
    on the inputs of ``data``; the folder it wrote to."""
    run_in_bundle(bundle, ("inference", "demo"), *inference_inputs(name, data)[0])
    return bundle / INFERENCE_OUTPUT[name]


def infer_in_repository(name: str, bundle_root: Path, data: Path, output_dir: Path) -> Path:
    """The same inference from the repository form (``bundles/<name>/configs``, the tree's ``common``) with the
    weights under ``bundle_root/models``, writing to ``output_dir``; that folder."""
    overrides = inference_inputs(name, data)[0] + ("--output_dir", str(output_dir))
    if name == "frozen_projection":  # never reuse the embeddings that training cached in bundle_root
        overrides += ("--cache_dir", str(output_dir / "cache"))
    run_bundle(name, ("inference", "demo"), bundle_root, *overrides)
    return output_dir


def read_predictions(name: str, output_dir: Path) -> dict[str, list[float] | str]:
    """Bundle ``name``'s inference files in ``output_dir`` as ``{input id: numbers}`` (report_gen: ``{id: text}``).

    cleft_cxr: the class probabilities of ``predictions.json``; ctclip_lora: each ``<stem>_zero_shot.json``'s
    probabilities; frozen_projection: each row's image then text projection from ``projections.safetensors``
    (ids from ``projections.json``); report_gen: the generated report of ``inference.jsonl``.
    """
    if name == "cleft_cxr":
        listing = json.loads((output_dir / "predictions.json").read_text())
        return {p["image"]: [p["probabilities"][c] for c in listing["class_names"]] for p in listing["predictions"]}
    if name == "ctclip_lora":
        records = {f.name[: -len("_zero_shot.json")]: f for f in output_dir.glob("*_zero_shot.json")}
        return {stem: list(json.loads(f.read_text())["probabilities"].values()) for stem, f in records.items()}
    if name == "frozen_projection":
        from safetensors.torch import load_file

        ids = json.loads((output_dir / "projections.json").read_text())["ids"]
        tensors = load_file(str(output_dir / "projections.safetensors"))
        rows = zip(tensors["image_projection"].tolist(), tensors["text_projection"].tolist())
        return {row_id: image + text for row_id, (image, text) in zip(ids, rows, strict=True)}
    lines = (output_dir / "inference.jsonl").read_text().splitlines()
    return {r["id"]: r["generated"] for r in map(json.loads, lines)}


def all_finite(predictions: dict[str, list[float] | str]) -> bool:
    """Every number of :func:`read_predictions`' output is finite (and there is one); texts are non-empty."""
    values = list(predictions.values())
    if values and all(isinstance(v, str) for v in values):
        return all(v.strip() for v in values)
    return bool(values) and all(v and all(math.isfinite(x) for x in v) for v in values)


def differing(one: dict[str, list[float] | str], two: dict[str, list[float] | str], atol: float = 1e-5) -> list[str]:
    """The ids whose predictions differ between two :func:`read_predictions` outputs (numbers beyond ``atol``,
    texts at all), ids only one of them has included."""
    ids = sorted(set(one) | set(two))
    return [
        i
        for i in ids
        if i not in one
        or i not in two
        or (
            one[i] != two[i]
            if isinstance(one[i], str) or isinstance(two[i], str)
            else len(one[i]) != len(two[i]) or any(abs(a - b) > atol for a, b in zip(one[i], two[i]))
        )
    ]
