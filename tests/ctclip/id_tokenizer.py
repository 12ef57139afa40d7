"""A stand-in WordPiece tokenizer for tiny CT-CLIP tests: fixed ids per word, no vocabulary file needed."""

from __future__ import annotations

import torch


class IdTokenizer:
    """Maps each prompt to fixed token ids (< 1024, [CLS]=2, [SEP]=3, pad 0), like a WordPiece tokenizer would."""

    def __call__(self, texts, padding="longest", truncation=True, max_length=512, return_tensors="pt"):
        ids = [[2] + [(sum(map(ord, w)) % 1000) + 10 for w in t.split()] + [3] for t in texts]
        length = max_length if padding == "max_length" else max(map(len, ids))
        input_ids = torch.tensor([i + [0] * (length - len(i)) for i in ids])
        return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}
