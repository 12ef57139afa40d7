"""A Hugging Face folder that names its own code (auto_map) is refused without a prompt, and its code never runs."""

from __future__ import annotations

import json
import sys

import pytest

from common.weights.hf_loading import RemoteCodeRefused, load_or_build_model, load_tokenizer

_PAYLOAD = "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('the folder code ran')\n"


def _custom_folder(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil-model",
                "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"},
            }
        )
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_evil.Evil", None]}}
        )
    )
    for module in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        (folder / f"{module}.py").write_text(_PAYLOAD)
    return folder


@pytest.mark.parametrize("load", ["model", "tokenizer"])
def test_custom_code_folder_is_refused_without_prompt(tmp_path, capfd, monkeypatch, load):
    folder = _custom_folder(tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))  # noqa: SIM115 - no answer to any prompt
    with pytest.raises(RemoteCodeRefused, match=r"text_model_path=.*custom.*never run \(trust_remote_code=False\)"):
        if load == "model":
            load_or_build_model(folder, key="text_model_path")
        else:
            load_tokenizer(folder, key="text_model_path")
    out, err = capfd.readouterr()
    assert "[y/N]" not in out + err
    assert sorted(p.name for p in folder.iterdir()) == before  # no RAN marker: the folder's code never ran


def test_native_architecture_with_auto_map_loads_the_transformers_class(tmp_path, caplog):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    ).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text(_PAYLOAD)
    model = load_or_build_model(folder, key="text_model_path")
    assert type(model) is BertModel and not (folder / "RAN").exists()
    assert "auto_map" in caplog.text
