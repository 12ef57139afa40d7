"""Reading a Lightning ``.ckpt`` of the official CLEFT code without running code from it.

Lightning is not installed here: a stand-in module named like Lightning's writes the same pickle (its
``AttributeDict`` of hyper-parameters beside the tensors), then is removed before reading, as on a user's machine.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from common.weights.cleft_checkpoint import CLEFTCheckpointError, read_official_state_dict


def _fake_module(monkeypatch, path: str, **attrs) -> None:
    parts = path.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    for key, value in attrs.items():
        value.__module__, value.__qualname__ = path, key
        setattr(sys.modules[path], key, value)


def test_reads_the_state_dict_of_a_lightning_checkpoint(tmp_path, monkeypatch):
    class AttributeDict(dict):
        pass

    with monkeypatch.context() as patch:
        _fake_module(patch, "lightning_fabric.utilities.data", AttributeDict=AttributeDict)
        state = {
            "logit_scale": torch.tensor(2.5),
            "img_encoder_q.global_embed.bias": torch.zeros(3, dtype=torch.bfloat16),
        }
        ckpt = {
            "epoch": 3,
            "global_step": 1200,
            "pytorch-lightning_version": "2.1.2",
            "state_dict": state,
            "hyper_parameters": AttributeDict(emb_dim=512, peft="lora", learning_rate=4e-5),
            "optimizer_states": [{"state": {0: {"momentum_buffer": torch.ones(2)}}, "param_groups": [{"lr": 1e-4}]}],
            "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.5)}},
        }
        torch.save(ckpt, tmp_path / "official.ckpt")
    assert "lightning_fabric" not in sys.modules
    read = read_official_state_dict(tmp_path / "official.ckpt")
    assert sorted(read) == sorted(state)
    assert read["img_encoder_q.global_embed.bias"].dtype == torch.bfloat16
    assert torch.equal(read["logit_scale"], state["logit_scale"])


def test_refuses_a_checkpoint_that_pickles_other_code(tmp_path, monkeypatch):
    class Payload:
        def __reduce__(self):
            return (print, ("this would run on load",))

    with monkeypatch.context() as patch:
        _fake_module(patch, "some_trainer.callbacks", Payload=Payload)
        torch.save({"state_dict": {"logit_scale": torch.tensor(1.0)}, "extra": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(CLEFTCheckpointError, match="allow-list"):
        read_official_state_dict(tmp_path / "evil.ckpt")


def test_missing_file_says_where_the_released_files_are(tmp_path):
    with pytest.raises(FileNotFoundError, match="XYPB/CLEFT"):
        read_official_state_dict(tmp_path / "nope.ckpt")
