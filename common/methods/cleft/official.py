"""Our CLEFT classifier from a released official CLEFT checkpoint (stage 1: zero-shot; stage 2: learned context).

The official stage-1 file (LoRA model) gives the zero-shot classifier over ``template.format(class name)``; the
official stage-2 file (prompt-tuned model) holds its own ViT, heads, ``logit_scale`` and the learned context, and
gives the prompt classifier ``[context] + class name`` (the official stage-2 test prompts). Loading is strict and
code-free (:mod:`common.weights.cleft_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.methods.cleft.model import CLEFT, CLEFTClassifier
from common.peft.context_prompt import ContextPrompt
from common.weights.cleft_checkpoint import PROMPT_EMBEDDING_KEY, load_official_cleft, read_official_state_dict

__all__ = ["official_classifier"]


def official_classifier(
    clip: CLEFT,
    checkpoint: str | Path,
    class_names: Sequence[str],
    template: str,
    prompt_names: Sequence[str] | None = None,
) -> CLEFTClassifier:
    """Load ``checkpoint`` (official ``.ckpt`` or ``.safetensors``) into ``clip`` and wrap it as a classifier.

    Args:
        clip: our CLEFT built with the official architecture (the bundle's ``network_def``).
        checkpoint: the released stage-1 or stage-2 file; a stage-2 file (with the prompt embedding) gets a
            context of its length.
        class_names, template, prompt_names: as :class:`CLEFTClassifier` (``template`` only for stage 1).

    Returns:
        The classifier in eval mode; its ``clip`` is ``clip``, loaded.
    """
    state = read_official_state_dict(checkpoint)
    if PROMPT_EMBEDDING_KEY not in state:
        load_official_cleft(clip, state)
        return CLEFTClassifier(clip, class_names, template=template, prompt_names=prompt_names).eval()
    context = ContextPrompt(*state[PROMPT_EMBEDDING_KEY].shape)
    classifier = CLEFTClassifier(clip, class_names, context=context, prompt_names=prompt_names)
    return load_official_cleft(classifier, state).eval()
