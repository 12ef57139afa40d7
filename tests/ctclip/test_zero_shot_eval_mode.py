"""The zero-shot iteration scores in eval mode: dropout of a model handed over in train mode never reaches a score."""

from __future__ import annotations

import torch
from id_tokenizer import IdTokenizer
from ignite.engine import Engine

from common.methods.ctclip.model import CTCLIP
from common.methods.ctclip.training import CTCLIPPrepareBatch
from common.methods.ctclip.zero_shot import ZeroShotIteration, zero_shot_probabilities

NAMES = ["Lung nodule", "Emphysema"]
TINY_CTVIT = {"dim": 16, "codebook_size": 32, "image_size": 16, "patch_size": 8, "temporal_patch_size": 4,
              "spatial_depth": 1, "temporal_depth": 1, "dim_head": 8, "heads": 2}  # fmt: skip
TINY_BERT = {"vocab_size": 1024, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 32, "hidden_dropout_prob": 0.5,
             "attention_probs_dropout_prob": 0.5}  # fmt: skip


def _engine(model: torch.nn.Module, iteration: ZeroShotIteration) -> Engine:
    engine = Engine(iteration)
    engine.network, engine.non_blocking = model, False
    engine.state.device, engine.state.iteration, engine.state.epoch_length = torch.device("cpu"), 1, 1
    return engine


def test_scores_of_a_model_in_train_mode_equal_the_eval_mode_reference():
    torch.manual_seed(0)
    model = CTCLIP.from_config(TINY_CTVIT, TINY_BERT, dim_latent=8)
    volume = torch.randn(2, 1, 8, 16, 16)
    prepare = CTCLIPPrepareBatch(IdTokenizer(), "prompt_pair", NAMES, require_labels=False)
    iteration = ZeroShotIteration(prepare, NAMES)
    model.eval()
    with torch.no_grad():  # the reference, computed without the iteration
        tokens = prepare.tokenize(iteration.prompts, torch.device("cpu"))
        prompts = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
        expected = zero_shot_probabilities(model.encode_volume(volume), prompts, model.logit_scale())
    model.train()  # as a trainer leaves it before validation
    with torch.no_grad():  # dropout 0.5 does change the scores in train mode, so the check below can fail
        dropped = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    assert not torch.allclose(dropped, prompts, atol=1e-3)
    first = iteration(_engine(model, iteration), {"image": volume})["pred"]
    model.train()
    second = iteration(_engine(model, iteration), {"image": volume})["pred"]
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(second, expected, rtol=0, atol=1e-6)
