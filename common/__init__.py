"""Shared library of the medical vision-language MONAI Bundles.

Leaves: ``data``, ``text``, ``vision``, ``peft``, ``losses``, ``metrics``, ``weights``; ``engines`` holds what every
method uses (checkpoint handler, gradient cache, gathers, writers); ``methods/<method>`` composes them for one method;
the bundles under ``bundles/`` wire everything in JSON.
"""

from __future__ import annotations

__version__ = "0.1.0"


from common import errors as _errors
from common import log_noise as _log_noise
from common._lazy import lazy_submodules

_errors.install()  # the last line of a failed bundle run names the bad input (common/errors.py)
_log_noise.install()  # warnings that repeat every load or epoch: once per run (common/log_noise.py)

__getattr__ = lazy_submodules(__name__)
