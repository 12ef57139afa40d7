"""Warnings that repeat every load or every epoch are shown once per run, so the rest of the log can be read.

Python prints a warning once per code location, but every ``warnings.catch_warnings()`` (transformers and MONAI
enter one on many calls) resets that record, and so does a ``"once"`` filter's, so MONAI's warnings came back on
every epoch. :func:`install` (called when ``common`` is imported) wraps ``warnings.showwarning`` with a record of
its own that those resets do not touch, and adds one filter:

* ``"ignoring non-scalar output in StatsHandler / TensorBoardStatsHandler"``: shown once per handler type. Our
  engines put tensors (embeddings, logits) in ``engine.state.output`` on purpose; the scalars are logged.
* MONAI ``PydicomReader``'s missing ``ImageOrientationPatient`` warning: ignored, because it fires on every load of a
  radiograph (the tags are optional for 2D images; rows and columns give the display orientation) and again in
  every DataLoader worker. :func:`common.data.image_checks.check_image_file` says it once per run instead, when the
  manifest is checked; a CT series without the tags is refused (:func:`common.data.volume_checks.check_dicom_series`).
"""

from __future__ import annotations

import re
import warnings

__all__ = ["install"]

_ONCE = re.compile(r"ignoring non-scalar output in (TensorBoard)?StatsHandler")
_IGNORED = r"PydicomReader: ImageOrientationPatient \(0020,0037\) and/or ImagePositionPatient"
_shown: set[str] = set()


def _show_once(previous):
    def showwarning(message, category, filename, lineno, file=None, line=None):
        match = _ONCE.search(str(message))
        if match:
            if match.group(0) in _shown:
                return
            _shown.add(match.group(0))
        previous(message, category, filename, lineno, file, line)

    showwarning._common_once = True  # type: ignore[attr-defined]
    return showwarning


def install() -> None:
    """Wrap ``warnings.showwarning`` once and add the ignore filter (idempotent)."""
    if not getattr(warnings.showwarning, "_common_once", False):
        warnings.showwarning = _show_once(warnings.showwarning)
    warnings.filterwarnings("ignore", message=_IGNORED, category=UserWarning)
