"""The zoo's `ci/unit_tests/test_<bundle>.py`, for the frozen_projection zip: a demo run inside the downloaded zip,
the zoo's `verify_bundle.py` (min and full) on the zip rebuilt with the demo-trained `models/model.pt`, then
that released zip's `inference.json` (with the demo overlay's tiny architectures) run in its downloaded folder
on inputs outside it: a finite prediction per input, equal to the repository form's with the same weights."""

from __future__ import annotations

import pytest
from zoo_zip import (
    all_finite,
    differing,
    infer_in_bundle,
    infer_in_repository,
    inference_inputs,
    packaged,
    read_predictions,
    train_demo,
    zoo_checks,
)

NAME = "frozen_projection"


@pytest.mark.slow
def test_zip_trains_passes_the_zoo_checks_and_infers_standalone(tmp_path):
    bundle = packaged(NAME, tmp_path, tag="plain")
    model = train_demo(bundle, NAME)
    assert model.is_file(), f"the demo training of the {NAME} zip wrote no models/model.pt (training writes it)"
    released = packaged(NAME, tmp_path, model=model, tag="released")
    output = zoo_checks(released.parent, NAME, "min", "full")
    assert f"{NAME}: verify_bundle min passed" in output and f"{NAME}: verify_bundle full passed" in output
    assert "export weights into TorchScript module successfully" in output  # not excluded: the zoo's ckpt_export ran

    # the downloaded release infers on its own (vendored code, shipped models/), from its folder, on the demo
    # training's data (outside the release: nothing is generated in it)
    data = bundle / "demo_data"
    predictions = read_predictions(NAME, infer_in_bundle(released, NAME, data))
    assert sorted(predictions) == sorted(inference_inputs(NAME, data)[1]), "one prediction per input row"
    assert all_finite(predictions), predictions
    assert not (released / "demo_data").exists()
    repository = read_predictions(NAME, infer_in_repository(NAME, bundle, data, tmp_path / "repository_inference"))
    assert not differing(predictions, repository), "the zip's inference differs from the repository form's"
