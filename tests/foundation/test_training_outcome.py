"""TrainingOutcomeCheck: a run that trains nothing or never scores validation fails with a message naming why."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader

from common.engines.training_outcome import TrainingOutcomeCheck, TrainingOutcomeError


def _trainer(rows: int, batch_size: int, drop_last: bool) -> tuple[Engine, DataLoader]:
    loader = DataLoader(list(range(rows)), batch_size=batch_size, drop_last=drop_last)
    return Engine(lambda engine, batch: float(len(batch))), loader


def _validator(score: float) -> Engine:
    validator = Engine(lambda engine, batch: None)
    validator.state.key_metric_name = "val_auroc"

    @validator.on(Events.COMPLETED)
    def _set(engine):
        engine.state.metrics["val_auroc"] = score

    return validator


def test_fewer_rows_than_batch_size_with_drop_last_fails_before_training():
    """MONAI's trainer returns from ``run()`` without a word on an empty loader; the check refuses it up front."""
    from monai.engines import SupervisedTrainer

    network = torch.nn.Linear(1, 1)
    loader = DataLoader([{"image": torch.zeros(1), "label": torch.zeros(1)}] * 3, batch_size=4, drop_last=True)
    with pytest.raises(TrainingOutcomeError) as err:
        SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=loader,
            network=network,
            optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
            loss_function=torch.nn.MSELoss(),
            train_handlers=[TrainingOutcomeCheck(ckpt_dir="models")],
        )
    message = str(err.value)
    assert "the train split has 3 row(s), which makes 0 training batches (minimum: 4 rows)" in message
    assert "--batch_size 3" in message


def test_nan_validation_on_every_epoch_fails_at_the_end():
    trainer, loader = _trainer(rows=8, batch_size=4, drop_last=True)
    validator = _validator(float("nan"))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0], max_epochs=1))
    TrainingOutcomeCheck(validator, ckpt_dir="models").attach(trainer)
    with pytest.raises(
        TrainingOutcomeError, match=r"never produced a finite val_auroc \(2 validation\(s\): nan, nan\)"
    ):
        trainer.run(loader, max_epochs=2)


def test_one_finite_validation_and_some_iterations_pass():
    trainer, loader = _trainer(rows=8, batch_size=4, drop_last=True)
    validator = _validator(0.7)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0], max_epochs=1))
    check = TrainingOutcomeCheck(validator)
    check.attach(trainer)
    trainer.run(loader, max_epochs=2)
    assert check.scores == [0.7, 0.7] and trainer.state.iteration == 4


def test_a_nan_score_writes_no_checkpoint(tmp_path):
    """EngineCheckpoint skips a NaN score: Ignite alone writes the first checkpoint whatever its score."""
    from common.engines.checkpoint import EngineCheckpoint, TrainedWeights, metric_score
    from common.engines.save_handler import TrainedWeightsSaveHandler

    network = torch.nn.Linear(2, 1)
    validator = _validator(float("nan"))
    handler = TrainedWeightsSaveHandler(tmp_path, base_fingerprint="0" * 64)
    EngineCheckpoint(
        {"model": TrainedWeights(network)},
        handler,
        filename_pattern="model.safetensors",
        score_name="val_auroc",
        score_function=metric_score("val_auroc"),
        events="COMPLETED",
    ).attach(validator)
    validator.run([0], max_epochs=1)
    assert not (tmp_path / "model.safetensors").exists()
