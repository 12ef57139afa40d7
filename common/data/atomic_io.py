"""Atomic file writes: a result file is either the old one or the complete new one, never half written.

The one writer of the tree (eval files, caches, manifests, checkpoints, benchmark results):

- :func:`write_text_atomic` ``(text, path)`` and :func:`write_json_atomic` ``(payload, path)`` - data first, as
  ``json.dump`` and ``torch.save``;
- :func:`atomic_path` - a temporary path for any other writer (bytes, ``np.save``, ``savefig``, ``save_file``);
- :func:`atomic_directory` - a folder swapped in as a whole;
- :func:`clean_interrupted_writes` - what a kill -9 mid-write left behind, undone on the next run.

Files get the mode a plain ``open(path, "w")`` would give under the process umask (``mkstemp`` alone gives 0600).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "atomic_path",
    "atomic_directory",
    "clean_interrupted_writes",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any error it is removed.

    The temporary file gets the permissions a plain ``open(path, "w")`` would (mkstemp's are 0600). ``suffix``
    matters to writers that pick a format by extension (``.png``, ``.npy``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` as a whole (a checkpoint folder is
    either the old one or the complete new one), on any error it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(data: bytes, path: str | Path) -> Path:
    """Write ``data`` to ``path`` atomically (folders created): an interruption never leaves half a file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write ``text`` (UTF-8, line endings as given) to ``path`` atomically; returns ``path``.

    Raises:
        TypeError: ``text`` is not a ``str`` or ``path`` is not a path (the arguments swapped).
    """
    if not isinstance(text, str) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"write_text_atomic(text, path) takes the text first and the path second, got "
            f"({type(text).__name__}, {type(path).__name__})"
        )
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return Path(path)


def write_json_atomic(payload: Any, path: str | Path) -> Path:
    """JSON with indentation; numpy scalars and other numbers are written as floats."""
    return write_text_atomic(json.dumps(payload, indent=2, default=float), path)


def clean_interrupted_writes(folder: str | Path) -> list[str]:
    """Undo what a killed :func:`atomic_directory` / :func:`atomic_path` left in ``folder``; returns what was done.

    A kill between the two renames of a folder swap leaves ``.<name>.old-<pid>`` (the previous complete folder) and no
    ``<name>``: the old folder is put back. Every ``.<name>.tmp-*`` staging folder and ``.<name>.*.tmp`` file is
    incomplete or unconfirmed, and is removed. Call it before writing into ``folder`` again, from the only writer.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    for old in sorted(folder.glob(".*.old-*")):
        target = folder / old.name[1 : old.name.rindex(".old-")]
        if target.exists():
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
            done.append(f"removed {old.name}")
        else:
            os.replace(old, target)
            done.append(f"restored {target.name} from {old.name}")
    for tmp in sorted(folder.glob(".*.tmp-*")):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        done.append(f"removed {tmp.name}")
    for tmp in sorted(folder.glob(".*.tmp")):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            done.append(f"removed {tmp.name}")
    return done
