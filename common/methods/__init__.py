"""One package per method, as transformers keeps ``models/<name>/``: its composed model, prepare_batch,
iteration, evaluation, inference and export. Methods compose the leaves (``data``, ``text``, ``vision``, ``peft``,
``losses``, ``metrics``, ``weights``) and the shared ``engines``; no method imports another."""

from common._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
