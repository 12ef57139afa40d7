"""The one checkpoint mechanism: Ignite's Checkpoint + our save handler keeps the best epoch, not the worst."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader
from peft import PeftModel
from safetensors.torch import load_file

from common.engines.checkpoint import (
    EngineCheckpoint,
    TrainedWeights,
    load_trained_weights,
    metric_score,
    read_checkpoint_metadata,
)
from common.engines.save_handler import TrainedWeightsSaveHandler, check_adapter_folder
from common.peft.lora import apply_lora
from common.weights.fingerprint import base_fingerprint


def _run_epochs(tmp_path, scores, greater_is_better, to_save=None, filename="model.safetensors", model_pt=""):
    """Three "epochs" whose weights equal the epoch number and whose validation metric is ``scores[epoch - 1]``."""
    net = torch.nn.Linear(2, 1, bias=False)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    model = torch.nn.ModuleDict({"head": net, "frozen": frozen})
    to_save = to_save or {"model": TrainedWeights(model)}
    fingerprint = base_fingerprint(model, exclude_trainable=True)
    handler = TrainedWeightsSaveHandler(tmp_path, fingerprint, to_save=to_save, model_pt=model_pt)
    checkpoint = EngineCheckpoint(
        to_save,
        handler,
        filename_pattern=filename,
        score_function=metric_score("val", greater_is_better),
        score_name="val",
    )

    def epoch(engine, _):
        with torch.no_grad():
            net.weight.fill_(engine.state.epoch)
        engine.state.metrics["val"] = scores[engine.state.epoch - 1]

    engine = Engine(epoch)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: None)
    checkpoint.attach(engine)
    engine.run([0], max_epochs=len(scores))
    return model, tmp_path / (filename or "")


@pytest.mark.parametrize("greater_is_better, kept_epoch", [(True, 2), (False, 1)])
def test_best_tracking_keeps_the_best_epoch(tmp_path, greater_is_better, kept_epoch):
    model, path = _run_epochs(tmp_path, [0.2, 0.9, 0.5], greater_is_better)
    state = load_file(str(path))
    assert sorted(state) == ["head.weight"]  # only what trained
    assert torch.all(state["head.weight"] == kept_epoch), f"kept epoch {state['head.weight'].flatten()[0]:.0f}"
    header = read_checkpoint_metadata(path)
    assert header["score_name"] == "val" and header["base_model_fingerprint"] == base_fingerprint(
        model, exclude_trainable=True
    )
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp or superseded file left


def test_nan_score_is_never_best(tmp_path):
    _, path = _run_epochs(tmp_path, [0.4, float("nan"), 0.3], True)
    assert torch.all(load_file(str(path))["head.weight"] == 1)


def test_default_names_remove_superseded_files(tmp_path):
    _run_epochs(tmp_path, [0.2, 0.9, 0.5], True, filename=None)
    assert [p.name for p in tmp_path.iterdir()] == ["model_val=0.9000.safetensors"]


def test_load_refuses_another_base(tmp_path):
    model, path = _run_epochs(tmp_path, [0.2, 0.9, 0.5], True)
    load_trained_weights(model, path, base_fingerprint(model, exclude_trainable=True))
    other = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 1, bias=False), "frozen": torch.nn.Linear(2, 2)})
    other["frozen"].requires_grad_(False)
    with pytest.raises(ValueError, match="belongs to base model medvlm-base:"):
        load_trained_weights(other, path, base_fingerprint(other, exclude_trainable=True), "other")


def test_model_pt_holds_the_best_weights_and_base_record_and_refuses_another_base(tmp_path):
    model, path = _run_epochs(tmp_path, [0.2, 0.9, 0.5], True, model_pt="model.safetensors")
    model_pt = tmp_path / "model.pt"
    content = torch.load(model_pt, weights_only=True)  # the model zoo's reader: no pickled objects
    assert sorted(content) == ["head.weight"]  # flat: the network's own state dict, as ckpt_export loads it
    torch.testing.assert_close(content["head.weight"], load_file(str(path))["head.weight"], rtol=0, atol=0)
    fingerprint = base_fingerprint(model, exclude_trainable=True)
    assert content._metadata[""]["base_record"]["base_model_fingerprint"] == fingerprint  # in the state dict
    assert read_checkpoint_metadata(model_pt) == read_checkpoint_metadata(path)
    assert read_checkpoint_metadata(model_pt)["base_model_fingerprint"] == fingerprint
    with torch.no_grad():
        model["head"].weight.zero_()
    load_trained_weights(model, model_pt, fingerprint)
    x = torch.ones(3, 2)
    torch.testing.assert_close(model["head"](x), torch.full((3, 1), 4.0), rtol=0, atol=0)  # epoch 2's weights
    fresh = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 1, bias=False), "frozen": torch.nn.Linear(2, 2)})
    loader = CheckpointLoader(str(model_pt), load_dict={"model": fresh}, strict=False)  # MONAI's own handler
    loader(Engine(lambda e, b: None))
    torch.testing.assert_close(fresh["head"](x), model["head"](x), rtol=0, atol=0)
    other = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 1, bias=False), "frozen": torch.nn.Linear(2, 2)})
    other["frozen"].requires_grad_(False)
    with pytest.raises(ValueError, match="belongs to base model medvlm-base:"):
        load_trained_weights(other, model_pt, base_fingerprint(other, exclude_trainable=True), "other")


def test_model_pt_record_names_the_base_without_local_paths_and_still_refuses_another(tmp_path):
    model = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 1, bias=False), "frozen": torch.nn.Linear(2, 2)})
    model["frozen"].requires_grad_(False)
    fingerprint = base_fingerprint(model, exclude_trainable=True)
    record = {"image_model": "/home/alice/models/dinov2-base", "lora": json.dumps({"path": "/srv/llm/", "rank": 4})}
    handler = TrainedWeightsSaveHandler(tmp_path, fingerprint, "/home/alice/models/Llama-3.2-1B", record=record)
    handler.model_pt = "model.safetensors"
    handler({"head.weight": model["head"].weight.detach()}, "model.safetensors")
    shipped = read_checkpoint_metadata(tmp_path / "model.pt")
    assert "/home/alice" not in json.dumps(shipped) and "/srv" not in json.dumps(shipped)
    assert shipped["base_model_name_or_path"] == "Llama-3.2-1B" and shipped["image_model"] == "dinov2-base"
    assert json.loads(shipped["lora"]) == {"path": "llm", "rank": 4}
    assert shipped["base_model_fingerprint"] == fingerprint
    load_trained_weights(model, tmp_path / "model.pt", fingerprint)
    other = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 1, bias=False), "frozen": torch.nn.Linear(2, 2)})
    other["frozen"].requires_grad_(False)
    with pytest.raises(ValueError, match="belongs to base model Llama-3.2-1B"):
        load_trained_weights(other, tmp_path / "model.pt", base_fingerprint(other, exclude_trainable=True))


def test_model_pt_of_the_earlier_nested_form_loads_and_one_without_record_is_refused(tmp_path):
    model = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 1, bias=False)})
    fingerprint = base_fingerprint(model, exclude_trainable=True)
    state = {"head.weight": torch.full((1, 2), 3.0)}
    torch.save({"model": state, "base_record": {"base_model_fingerprint": fingerprint}}, tmp_path / "nested.pt")
    load_trained_weights(model, tmp_path / "nested.pt", fingerprint)
    torch.testing.assert_close(model["head"].weight, state["head.weight"], rtol=0, atol=0)
    torch.save(dict(state), tmp_path / "bare.pt")  # a plain dict: no _metadata, so no record
    with pytest.raises(ValueError, match="bare.pt records no base_model_fingerprint"):
        load_trained_weights(model, tmp_path / "bare.pt", fingerprint)
    torch.save({"weights": state}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt: expected a flat state dict"):
        read_checkpoint_metadata(tmp_path / "other.pt")


def test_no_model_pt_unless_asked(tmp_path):
    _run_epochs(tmp_path, [0.2, 0.9], True)
    assert not (tmp_path / "model.pt").exists()


def test_peft_folder_is_written_atomically_with_its_base_and_loads_with_plain_peft(tmp_path):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    peft_model = apply_lora(base, ["0"], rank=2, log_summary=False)
    to_save = {"adapters": peft_model}
    handler = TrainedWeightsSaveHandler(tmp_path, base_fingerprint(peft_model), "/weights/base", to_save=to_save)
    checkpoint = EngineCheckpoint(to_save, handler, filename_pattern="adapters", score_function=metric_score("val"))

    def epoch(engine, _):
        with torch.no_grad():
            peft_model.base_model.model[0].lora_B["default"].weight.fill_(engine.state.epoch)
        engine.state.metrics["val"] = [0.2, 0.9, 0.5][engine.state.epoch - 1]

    engine = Engine(epoch)
    checkpoint.attach(engine)
    engine.run([0], max_epochs=3)
    folder = tmp_path / "adapters"
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "/weights/base"
    torch.manual_seed(0)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    check_adapter_folder(folder, fresh)
    loaded = PeftModel.from_pretrained(fresh, str(folder))
    assert torch.all(loaded.base_model.model[0].lora_B["default"].weight == 2)
    with pytest.raises(ValueError, match=r"belongs to base model /weights/base"):
        check_adapter_folder(folder, torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)))
