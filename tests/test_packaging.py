"""A packaged bundle downloads with MONAI's own command and runs standalone on its vendored ``common``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(args, cwd, timeout=300):
    result = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


@pytest.mark.slow
def test_package_download_and_run_standalone(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from package_bundle import package

    archive = package("frozen_projection", tmp_path / "dist")
    names = zipfile.ZipFile(archive).namelist()
    assert "frozen_projection/configs/train.json" in names
    assert "frozen_projection/frozen_projection_common/losses/clip_loss.py" in names  # vendored under its own name
    generated = ("models/", "eval/", "logs/", "cache/", "demo_data/")
    assert not [
        n for n in names if n.startswith(tuple(f"frozen_projection/{g}" for g in generated)) or n.endswith(".pyc")
    ]

    downloads = tmp_path / "downloads"
    _run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "download",
            "--name",
            "frozen_projection",
            "--url",
            archive.as_uri(),
            "--bundle_dir",
            str(downloads),
        ],
        cwd=tmp_path,
    )
    bundle = downloads / "frozen_projection"
    code = "import frozen_projection_common as c; print(c.__file__)"
    which = _run([sys.executable, "-c", code], cwd=bundle)
    assert str(bundle) in which.stdout  # the vendored copy is imported from inside the bundle folder
    _run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "['configs/train.json','configs/demo.json']",
            "--bundle_root",
            ".",
            "--num_epochs",
            "1",
            "--demo_num_samples",
            "60",
        ],
        cwd=bundle,
    )
    assert (bundle / "models" / "model_final.safetensors").is_file()


def test_package_ships_the_model_pt_of_a_trained_run_with_its_record(tmp_path):
    """``--run <bundle_root>`` ships the run's ``models/model.pt`` as training wrote it (state dict and base-model
    record, what inference.json loads) and the tokenizer its training built (``models/tokenizer/``), nothing else of
    its ``models/``; a bare state dict, with no record for inference to check, is refused."""
    import torch

    from common.engines.checkpoint import read_checkpoint_metadata, read_trained_state, save_model_pt

    state = {"image_head.net.0.weight": torch.randn(4, 3), "image_head.net.0.bias": torch.randn(4)}
    record = {"base_model_fingerprint": "f" * 64, "network": '{"image_dim": 3}'}
    save_model_pt(state, tmp_path / "run" / "models" / "model.pt", record)
    built_from = {"training_manifest": "/home/me/cxr/manifest.csv", "training_rows": 40, "training_data_sha256": "a"}
    run_files = {"tokenizer/tokenizer.json": "{}", "tokenizer/built_from.json": json.dumps(built_from)}
    run_files["resume/model.pt"] = "x"
    for relative, text in run_files.items():
        (tmp_path / "run" / "models" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "run" / "models" / relative).write_text(text)
    script = [sys.executable, str(ROOT / "scripts" / "package_bundle.py"), "frozen_projection"]
    packaged = _run([*script, "--out", str(tmp_path / "dist"), "--run", str(tmp_path / "run")], ROOT)
    archive = Path(packaged.stdout.strip())
    with zipfile.ZipFile(archive) as zipped:
        zipped.extract("frozen_projection/models/model.pt", tmp_path / "out")
        models = sorted(n for n in zipped.namelist() if n.startswith("frozen_projection/models/"))
        shipped_built_from = json.loads(zipped.read("frozen_projection/models/tokenizer/built_from.json"))
    # the tokenizer's record ships without the training machine's paths; its rows' hash (what is checked) is kept
    assert shipped_built_from == {**built_from, "training_manifest": "manifest.csv"}
    expected = ["model.pt", "tokenizer/built_from.json", "tokenizer/tokenizer.json"]
    assert models == [f"frozen_projection/models/{n}" for n in expected]
    shipped = tmp_path / "out" / "frozen_projection" / "models" / "model.pt"
    assert torch.load(shipped, weights_only=True).keys() == state.keys()  # flat: the network's own state dict
    assert read_checkpoint_metadata(shipped) == record
    for key, tensor in read_trained_state(shipped).items():
        torch.testing.assert_close(tensor, state[key])
    assert read_trained_state(shipped).keys() == state.keys()

    torch.save(state, tmp_path / "bare.pt")
    bare = subprocess.run([*script, "--out", str(tmp_path / "dist"), "--model", str(tmp_path / "bare.pt")],
                          cwd=ROOT, env=ENV, capture_output=True, text=True)  # fmt: skip
    assert bare.returncode != 0 and "bare.pt" in bare.stderr
    missing = subprocess.run([*script, "--run", str(tmp_path / "untrained")], cwd=ROOT, env=ENV,
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode != 0 and "untrained/models/model.pt" in missing.stderr
