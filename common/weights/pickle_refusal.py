"""The message for a checkpoint that ``torch.load(weights_only=True)`` refuses, saying why we refuse it.

PyTorch's own text invites retrying with ``weights_only=False``; that would run whatever the file pickles (a
``__reduce__`` can call any function), and a model checkpoint needs none of it. So the refusal names the file, the
object it pickles and what to do instead, and PyTorch's advice is not passed on.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["pickle_refusal"]

_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def pickle_refusal(path: str | Path, error: BaseException, what_to_do: str) -> str:
    """One-paragraph refusal of ``path``; ``error`` is torch's ``UnpicklingError``.

    Args:
        path: the checkpoint file.
        error: what ``torch.load(weights_only=True)`` raised.
        what_to_do: the step for the user (e.g. convert to safetensors in a trusted environment).
    """
    found = _GLOBAL.search(str(error))
    what = f"the object {found.group(1)}" if found else "an object"
    return (
        f"{path} pickles {what} besides tensors and plain containers, so it is not read: loading it would run code "
        f"from the file, and weights_only=False is never used here. {what_to_do}"
    )
