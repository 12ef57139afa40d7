"""The last line of a failed bundle run names the bad input, not MONAI's ``Failed to evaluate ConfigExpression``.

MONAI's config parser wraps every exception raised while evaluating an expression or instantiating a component in a
``RuntimeError("Failed to evaluate ...")`` (and its transforms wrap theirs in ``RuntimeError("applying transform
...")``), so the last line of a failed ``python -m monai.bundle run`` hides the message our code wrote (MONAI issue
7451). Python prints the whole chain; we add one line after it.

What counts as ours is the repository's error convention (DESIGN §6): a ``ValueError`` or ``FileNotFoundError``
raised by code in the ``common`` package is an input check whose message names the file, row, field and what to do.
:func:`install` (called when ``common`` is imported, which every bundle config does first) wraps
``sys.excepthook``: for an uncaught exception whose chain holds such an error, the usual full traceback is printed
and then that error's message as the last line. Anything else (a bug, a MONAI or PyTorch error) is left to the
previous hook untouched. The traceback is never hidden, and nothing changes inside a program that catches the error.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import TracebackType

__all__ = ["install", "input_error", "root_cause", "INPUT_ERROR_TYPES"]

#: the exception types our input checks raise (DESIGN §6); subclasses (ManifestError, ...) included.
INPUT_ERROR_TYPES: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
# a DataLoader worker's error comes back re-created from its formatted traceback (torch ExceptionWrapper)
_WORKER_LINE = re.compile(r'^\s*File "(?P<file>[^"]+)", line \d+')
_ERROR_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Refused)): (?P<message>.+)$")


def _raised_in_common(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(_PACKAGE_DIR)


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and its causes/contexts, outermost first, as Python prints them (in reverse)."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ if err.__cause__ is not None else (None if err.__suppress_context__ else err.__context__)
    return chain


def _from_worker_text(text: str) -> str | None:
    """Our message inside the traceback text of a DataLoader worker (the outermost one raised in ``common``)."""
    lines = text.splitlines()
    found = None
    last_file = ""
    for line in lines:
        frame = _WORKER_LINE.match(line)
        if frame:
            last_file = frame.group("file")
            continue
        error = _ERROR_LINE.match(line)
        if error and last_file.startswith(_PACKAGE_DIR):
            name = error.group("type").rsplit(".", 1)[-1]
            if name in ("ValueError", "FileNotFoundError") or error.group("type").startswith("common."):
                found = f"{name}: {error.group('message')}"
        if error:
            last_file = ""
    return found


def input_error(err: BaseException) -> BaseException | None:
    """The outermost input error of ours in ``err``'s chain (MONAI wraps it in RuntimeErrors), or None."""
    for link in _chain(err):
        if isinstance(link, INPUT_ERROR_TYPES) and _raised_in_common(link):
            return link
    return None


def root_cause(err: BaseException) -> str | None:
    """One line naming the bad input behind ``err``, or None when ``err`` is not caused by one of our input checks.

    The outermost error of ours in the chain is taken: where our code wraps a reader's error it adds the file and row.
    """
    ours = input_error(err)
    if ours is not None:
        return f"{type(ours).__name__}: {' '.join(str(ours).split())}"
    for link in _chain(err):
        text = str(link)
        if "DataLoader worker process" in text and "Original Traceback" in text:
            found = _from_worker_text(text)
            if found:
                return " ".join(found.split())
    return None


def _hook_after(previous):
    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        previous(exc_type, exc, tb)
        try:
            cause = root_cause(exc)
        except Exception:  # noqa: BLE001 - never let the hook hide the original error
            cause = None
        if cause:
            sys.stderr.write(f"\nThe run failed on bad input (details above): {cause}\n")
            sys.stderr.flush()

    excepthook._common_root_cause = True  # type: ignore[attr-defined]
    return excepthook


def install() -> None:
    """Wrap ``sys.excepthook`` once (idempotent); the previous hook still prints the traceback first."""
    if getattr(sys.excepthook, "_common_root_cause", False):
        return
    sys.excepthook = _hook_after(sys.excepthook)
