"""Collate image + report items into a causal-LM batch: prompt (with visual placeholders) + report + EOS.

Labels are ``-100`` (ignored by the LM loss) on the prompt, the visual positions and the padding, so the loss covers
report tokens (and the closing EOS) only. Reports longer than ``text_max_length`` are truncated and counted, and
each truncation is logged with the item's id. The references scored later are the full reports, never the
truncated token sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from common.peft.soft_visual_prompt import PromptTemplate

logger = logging.getLogger(__name__)

__all__ = [
    "IGNORE_INDEX",
    "MAX_UNKNOWN_TOKEN_RATE",
    "ReportCollator",
    "build_word_level_tokenizer",
    "unknown_token_rate",
    "warn_unknown_tokens",
]

IGNORE_INDEX = -100


def build_word_level_tokenizer(texts: Iterable[str], save_dir: str | Path | None = None, min_frequency: int = 1):
    """Train a small lower-case word-level tokenizer (Hugging Face ``tokenizers``) on ``texts``.

    Used by the demo and tests, whose tiny causal LM is built from a config and so has no tokenizer of its own;
    real LLMs bring theirs (``llm_path``). Special tokens: ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``.

    Returns:
        A ``transformers.PreTrainedTokenizerFast``, also saved to ``save_dir`` when given.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.train_from_iterator(
        list(texts), trainers.WordLevelTrainer(special_tokens=specials, min_frequency=min_frequency)
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer


MAX_UNKNOWN_TOKEN_RATE = 0.05  # above this share of <unk> tokens, a tokenizer does not fit the reports


def unknown_token_rate(tokenizer, texts: Sequence[str]) -> float:
    """The share of ``tokenizer.unk_token_id`` among the tokens of ``texts`` (0 for a tokenizer without one)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return 0.0
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    total = sum(len(seq) for seq in ids)
    return sum(seq.count(unk) for seq in ids) / total if total else 0.0


def warn_unknown_tokens(
    tokenizer, texts: Sequence[str], max_rate: float = MAX_UNKNOWN_TOKEN_RATE, what: str = "the reports"
) -> float:
    """Warn when over ``max_rate`` of the tokens of ``texts`` are unknown (``<unk>``); returns the rate."""
    rate = unknown_token_rate(tokenizer, texts)
    if rate > max_rate:
        logger.warning(
            "%.1f%% of the tokens of %s (%d texts) are unknown to the tokenizer (%s, %d words): over the %.1f%% "
            "threshold, the model learns '%s' for them; use the LLM's own tokenizer (tokenizer_path) or build one "
            "from these reports",
            100 * rate,
            what,
            len(texts),
            getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
            len(tokenizer),
            100 * max_rate,
            tokenizer.unk_token,
        )
    return rate


class ReportCollator:
    """``collate_fn`` for a DataLoader of ``{"image": (C, H, W), "report": str, "id": str}`` items.

    Args:
        tokenizer: the causal LM's Hugging Face tokenizer.
        template: the prompt with its visual positions (:class:`PromptTemplate`).
        text_max_length: reports are cut to this many tokens (before EOS); a cut is logged and counted.
        with_targets: append report + EOS and build labels (training); False gives the prompt alone (generation).
        image_key, report_key, id_key: item keys.

    Returns (from ``__call__``):
        ``image`` (B, C, H, W); ``input_ids``, ``attention_mask``, ``image_token_mask`` (B, L); ``labels`` (B, L) when
        ``with_targets``; ``report`` and ``id`` as lists of strings (the untruncated references).
    """

    def __init__(
        self,
        tokenizer,
        template: PromptTemplate,
        text_max_length: int = 100,
        with_targets: bool = True,
        image_key: str = "image",
        report_key: str = "report",
        id_key: str = "id",
    ) -> None:
        if text_max_length <= 0:
            raise ValueError(f"text_max_length must be positive, got {text_max_length}")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token: reports need one to mark their end")
        self.tokenizer = tokenizer
        self.template = template
        self.text_max_length = int(text_max_length)
        self.with_targets = bool(with_targets)
        self.image_key, self.report_key, self.id_key = image_key, report_key, id_key
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.num_truncated = 0
        self.num_seen = 0

    def _report_text(self, item: dict[str, Any], index: int) -> str:
        report = item.get(self.report_key)
        if not isinstance(report, str) or not report.strip():
            raise ValueError(
                f"item {item.get(self.id_key, index)!r}: field {self.report_key!r} must be a non-empty report, "
                f"got {report!r}"
            )
        return report.strip()

    def _report_ids(self, report: str, item_id: str) -> list[int]:
        ids = self.tokenizer(report, add_special_tokens=False)["input_ids"]
        self.num_seen += 1
        if len(ids) > self.text_max_length:
            self.num_truncated += 1
            logger.warning(
                "report of %r has %d tokens, truncated to text_max_length=%d (%d of %d reports truncated so far)",
                item_id,
                len(ids),
                self.text_max_length,
                self.num_truncated,
                self.num_seen,
            )
            ids = ids[: self.text_max_length]
        return [*ids, self.tokenizer.eos_token_id]

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        ids_list = [str(item.get(self.id_key, i)) for i, item in enumerate(items)]
        has_reports = all(self.report_key in item for item in items)
        if self.with_targets and not has_reports:
            missing = [ids_list[i] for i, item in enumerate(items) if self.report_key not in item]
            raise ValueError(f"training items {missing} have no {self.report_key!r} field: a report is the target")
        reports = [self._report_text(item, i) for i, item in enumerate(items)] if has_reports else []
        prompt_ids, prompt_mask = self.template.prompt_ids()
        rows, masks, labels = [], [], []
        for i, item_id in enumerate(ids_list):
            if self.with_targets:
                target = self._report_ids(reports[i], item_id)
                rows.append([*prompt_ids, *target])
                masks.append([*prompt_mask, *([False] * len(target))])
                labels.append([IGNORE_INDEX] * len(prompt_ids) + target)
            else:
                rows.append(list(prompt_ids))
                masks.append(list(prompt_mask))
        length = max(len(r) for r in rows)
        batch_size = len(rows)
        input_ids = torch.full((batch_size, length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        image_token_mask = torch.zeros((batch_size, length), dtype=torch.bool)
        label_tensor = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
        for b, row in enumerate(rows):  # right padding: the prompt starts every row at position 0
            input_ids[b, : len(row)] = torch.tensor(row)
            attention_mask[b, : len(row)] = 1
            image_token_mask[b, : len(row)] = torch.tensor(masks[b])
            if self.with_targets:
                label_tensor[b, : len(row)] = torch.tensor(labels[b])
        missing_images = [ids_list[i] for i, item in enumerate(items) if self.image_key not in item]
        if missing_images:
            raise ValueError(f"items {missing_images} have no {self.image_key!r} field")
        images = [torch.as_tensor(item[self.image_key]) for item in items]
        shapes = {tuple(img.shape) for img in images}
        if len(shapes) > 1:
            raise ValueError(f"images of one batch differ in shape {sorted(shapes)}: resize them in the transforms")
        batch: dict[str, Any] = {
            self.image_key: torch.stack([img.as_subclass(torch.Tensor) for img in images]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "image_token_mask": image_token_mask,
            "report": reports,
            "id": ids_list,
        }
        if self.with_targets:
            batch["labels"] = label_tensor
        return batch
