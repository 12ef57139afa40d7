"""The zoo's `ci/unit_tests/test_<bundle>.py`, for the frozen_projection zip: a demo run inside the downloaded zip,
then the zoo's `verify_bundle.py` (min and full) on the zip rebuilt with the demo-trained `models/model.pt`."""

from __future__ import annotations

import pytest
from zoo_zip import packaged, train_demo, zoo_checks

NAME = "frozen_projection"


@pytest.mark.slow
def test_zip_trains_and_passes_the_zoo_checks(tmp_path):
    bundle = packaged(NAME, tmp_path, tag="plain")
    model = train_demo(bundle, NAME)
    assert model.is_file(), f"the demo training of the {NAME} zip wrote no models/model.pt (training writes it)"
    released = packaged(NAME, tmp_path, model=model, tag="released")
    output = zoo_checks(released.parent, NAME, "min", "full")
    assert f"{NAME}: verify_bundle min passed" in output and f"{NAME}: verify_bundle full passed" in output
    assert "export weights into TorchScript module successfully" in output  # not excluded: the zoo's ckpt_export ran
