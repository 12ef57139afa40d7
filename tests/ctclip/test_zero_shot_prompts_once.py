"""Zero-shot over a folder tokenises the prompts once and encodes them once per evaluator run, however many volumes
and class names."""

from __future__ import annotations

import torch
from id_tokenizer import IdTokenizer
from monai.engines import SupervisedEvaluator

from common.methods.ctclip.model import CTCLIP
from common.methods.ctclip.training import CTCLIPPrepareBatch
from common.methods.ctclip.zero_shot import ZeroShotIteration

CTVIT = {
    "dim": 16,
    "codebook_size": 64,
    "image_size": 16,
    "patch_size": 8,
    "temporal_patch_size": 4,
    "spatial_depth": 1,
    "temporal_depth": 1,
    "dim_head": 8,
    "heads": 2,
}
BERT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


def test_prompts_encoded_once_per_run_for_1000_class_names():
    model = CTCLIP.from_config(CTVIT, {"vocab_size": 30522, **BERT}, dim_latent=16, init_seed=0).eval()
    names = [f"finding {i}" for i in range(1000)]
    prompt_rows = []
    encode_text = model.encode_text

    def counting(input_ids, attention_mask=None):
        prompt_rows.append(input_ids.shape[0])
        return encode_text(input_ids, attention_mask)

    model.encode_text = counting
    tokenized = []

    class Counting(IdTokenizer):
        def __call__(self, texts, **kwargs):
            tokenized.append(len(texts))
            return super().__call__(texts, **kwargs)

    prepare = CTCLIPPrepareBatch(Counting(), "prompt_pair", names, require_labels=False)
    volumes = [{"image": torch.rand(1, 8, 16, 16, generator=torch.Generator().manual_seed(i))} for i in range(5)]
    loader = torch.utils.data.DataLoader(volumes, batch_size=1)
    iteration = ZeroShotIteration(prepare, names)
    evaluator = SupervisedEvaluator(torch.device("cpu"), loader, model, iteration_update=iteration, decollate=False)
    evaluator.run()
    first = evaluator.state.output["pred"]
    evaluator.run()  # a second run (the next validation round) encodes them again, once
    assert prompt_rows == [2000, 2000]
    assert tokenized == [2000]  # tokenised once, not per batch (the per-volume cost grew with the class names)
    assert first.shape == (1, 1000)
    torch.testing.assert_close(evaluator.state.output["pred"], first)
