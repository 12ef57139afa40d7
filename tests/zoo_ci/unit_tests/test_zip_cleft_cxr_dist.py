"""The zoo's `ci/unit_tests/test_<bundle>_dist.py` for the cleft_cxr zip: `multi_gpu_train.json` on 2 gloo ranks,
run inside the downloaded zip (its vendored code), writes the trained weights once."""

from __future__ import annotations

import pytest
from bundle_runner import TORCHRUN_2
from zoo_zip import DEMO, DIST_CONFIGS, packaged, run_in_bundle

NAME = "cleft_cxr"


@pytest.mark.slow
def test_zip_trains_on_two_ranks(tmp_path):
    bundle = packaged(NAME, tmp_path)
    run_in_bundle(bundle, DIST_CONFIGS[NAME], *DEMO[NAME], "--dist_backend", "gloo", launcher=TORCHRUN_2)
    weights = sorted((bundle / "models").rglob("*.safetensors")) + sorted((bundle / "models").glob("model.pt"))
    assert weights, f"two-rank training of the {NAME} zip wrote no weights under models/"
