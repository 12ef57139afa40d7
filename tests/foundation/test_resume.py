"""ResumeHandler: a training stopped after an epoch and rerun ends bit-identical, keeps its best checkpoint, and a
different run in the same folder is refused (tiny MONAI trainer in-process; the kill -9 runs of the bundles are in
tests/test_resume_after_kill.py)."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from monai.transforms import RandGaussianNoised
from monai.utils import set_determinism

from common.engines.checkpoint import EngineCheckpoint, TrainedWeights, metric_score, read_checkpoint_metadata
from common.engines.resume import ResumeHandler, load_resume_state
from common.engines.run_record import RUN_RECORD_FILE, read_run_record
from common.engines.save_handler import TrainedWeightsSaveHandler


class _Stopped(Exception):
    """Stands for the kill: raised at the start of an epoch, after the previous epoch's state was written."""


class _Validate:
    """Runs ``evaluator`` at the start and after every epoch (as MONAI's ValidationHandler with ``exec_at_start``,
    without its type check), on a DataLoader: making its iterator draws from torch's global generator."""

    def __init__(self, evaluator: Engine) -> None:
        self.evaluator = evaluator

    def attach(self, engine: Engine) -> None:
        loader = torch.utils.data.DataLoader([0])  # made once, as in a config; each iterator draws a base seed
        validate = lambda e: self.evaluator.run(loader)  # noqa: E731
        engine.add_event_handler(Events.STARTED, validate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, validate)


class _StopAt:
    def __init__(self, epoch: int | None) -> None:
        self.epoch = epoch

    def attach(self, engine: Engine) -> None:
        def stop(e: Engine) -> None:
            if self.epoch is not None and e.state.epoch > self.epoch:
                raise _Stopped(f"stopped in epoch {e.state.epoch}")

        engine.add_event_handler(Events.ITERATION_STARTED, stop)


def _train(ckpt_dir, scores, stop_after=None, resume=True, seed=0, max_epochs=4):
    """A 4-epoch training with dropout, shuffling, a random transform and an LR schedule; the validation score of
    epoch ``e`` is ``scores[e - 1]`` (so a test decides which epoch is best). Returns (network, resume handler)."""
    set_determinism(seed=0)
    network = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    data = [{"image": torch.randn(4), "label": torch.randn(1)} for _ in range(12)]
    loader = DataLoader(Dataset(data, RandGaussianNoised("image", prob=0.5)), batch_size=4, shuffle=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    def evaluate(engine, _):
        engine.state.metrics["val"] = scores[trainer.state.epoch - 1] if trainer.state.epoch else 0.0

    evaluator = Engine(evaluate)
    to_save = {"model": TrainedWeights(network)}
    best = EngineCheckpoint(
        to_save,
        TrainedWeightsSaveHandler(ckpt_dir, "base-fingerprint"),
        filename_pattern="model.safetensors",
        score_name="val",
        score_function=metric_score("val"),
    )
    best.attach(evaluator)
    resumer = ResumeHandler(
        ckpt_dir,
        resume=resume,
        identity={"seed": seed},
        checkpoints=[best],
        evaluator=evaluator,
        lr_scheduler=scheduler,
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.MSELoss(),
        # first, as in ctclip_lora's train.json: restored before the validation at start scores the model
        train_handlers=[
            resumer,
            LrScheduleHandler(scheduler, print_lr=False),
            _Validate(evaluator),
            _StopAt(stop_after),
        ],
    )
    trainer.run()
    return network, resumer


def _interrupted(ckpt_dir, scores, stop_after):
    with pytest.raises(_Stopped):
        _train(ckpt_dir, scores, stop_after=stop_after)


def test_resumed_training_ends_with_the_uninterrupted_weights(tmp_path):
    scores = [0.5, 0.6, 0.7, 0.8]
    reference, _ = _train(tmp_path / "reference", scores)
    _interrupted(tmp_path / "resumed", scores, stop_after=2)
    resumed, handler = _train(tmp_path / "resumed", scores)
    assert handler.resumed_from == 2
    for (name, want), got in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(want, got), f"{name} differs after the resume"


def test_resume_state_is_weights_only_and_complete(tmp_path):
    _interrupted(tmp_path, [0.5, 0.6, 0.7, 0.8], stop_after=1)
    state = load_resume_state(tmp_path / "resume" / "model.pt")  # torch.load(weights_only=True)
    assert set(state) == {"trainer", "model", "optimizer", "random", "lr_scheduler", "best_0", "evaluator_best"}
    assert state["trainer"]["iteration"] == 3 and state["lr_scheduler"]["last_epoch"] == 1
    assert state["best_0"]["_saved"][0][1] == "model.safetensors"
    assert len(state["random"]["transforms"]) >= 1  # the RandGaussianNoised state travels too


def test_best_checkpoint_survives_a_kill_and_rerun(tmp_path):
    """The issue's case: best val 0.9092 (epoch 1); killed in epoch 3; a rerun from scratch would score 0.8954 in its
    first epoch and overwrite the best. Resumed, it only runs epochs 3-4, whose worse scores write nothing."""
    _interrupted(tmp_path, [0.9092, 0.8954, 0.0, 0.0], stop_after=2)
    best = tmp_path / "model.safetensors"
    before = best.read_bytes()
    _train(tmp_path, [0.8954, 0.8954, 0.85, 0.80])
    assert best.read_bytes() == before
    header = read_checkpoint_metadata(best)
    assert float(header["val"]) == pytest.approx(0.9092)


def test_a_better_epoch_after_the_resume_still_replaces_the_best(tmp_path):
    _interrupted(tmp_path, [0.7, 0.6, 0.0, 0.0], stop_after=2)
    _train(tmp_path, [0.7, 0.6, 0.9, 0.8])
    assert float(read_checkpoint_metadata(tmp_path / "model.safetensors")["val"]) == pytest.approx(0.9)


def test_another_run_in_the_same_folder_is_refused(tmp_path):
    _interrupted(tmp_path, [0.5, 0.6, 0.7, 0.8], stop_after=1)
    files = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(
        ValueError, match=r"holds another run of stage 'model' \(it differs in: seed: 0 -> 1\).*--ckpt_dir"
    ):
        _train(tmp_path, [0.5, 0.6, 0.7, 0.8], seed=1)
    with pytest.raises(ValueError, match="resume is false but .* already holds a run.*--ckpt_dir <a new folder>"):
        _train(tmp_path, [0.5, 0.6, 0.7, 0.8], resume=False)
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


def test_resume_false_in_a_fresh_folder_records_the_run(tmp_path):
    _train(tmp_path, [0.5, 0.6, 0.7, 0.8], resume=False)
    entry = read_run_record(tmp_path)["model"]
    assert entry["identity"]["seed"] == 0 and entry["identity"]["max_epochs"] == 4
    assert json.loads((tmp_path / RUN_RECORD_FILE).read_text())["model"]["run_id"] == entry["run_id"]


def test_a_pickled_resume_state_is_refused(tmp_path):
    _interrupted(tmp_path, [0.5, 0.6, 0.7, 0.8], stop_after=1)
    torch.save({"trainer": _StopAt(1)}, tmp_path / "resume" / "model.pt")  # a pickled object, not a state
    with pytest.raises(ValueError, match="cannot be read safely.*refused rather than unpickled"):
        _train(tmp_path, [0.5, 0.6, 0.7, 0.8])
