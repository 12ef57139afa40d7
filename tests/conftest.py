"""Shared fixtures: the real sample data beside the repository, seeds, small thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDVLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def in_ci() -> bool:
    """Whether the tests run in CI (``CI=true``, as GitHub Actions, GitLab and most CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_fixture_path(path: str | Path, what: str) -> Path:
    """``path`` if it exists. Otherwise the test FAILS in CI (``CI=true``), naming the missing path, so a CI run
    without the real sample data cannot pass without its parity and real-file tests; locally it is skipped with
    the same message.

    Args:
        path: the fixture file or folder a test needs.
        what: what it is, for the message (e.g. ``"CT-CLIP reference vectors"``).
    """
    path = Path(path)
    if path.exists():
        return path
    message = f"{what} not found at {path} (set MEDVLM_SHARED_DATA to the folder of the real sample data)"
    if in_ci():
        pytest.fail(f"CI=true, so a missing test fixture is a failure: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def require_fixture():
    """:func:`require_fixture_path`, for tests and fixtures in every folder (conftest modules are not imported)."""
    return require_fixture_path


@pytest.fixture(scope="session")
def reference_set(request, require_fixture):
    """``reference_set(env_var, subdir, marker, what)``: a folder of reference vectors from official code.

    ``$env_var`` names another set (the same tests then run against it unchanged; a set without ``marker`` is an
    error); otherwise ``../shared/data/<subdir>``, which fails in CI and skips locally when absent.
    """

    def find(env_var: str, subdir: str, marker: str, what: str) -> Path:
        explicit = os.environ.get(env_var)
        folder = Path(explicit) if explicit else request.getfixturevalue("shared_data_dir") / subdir
        if explicit and not (folder / marker).is_file():
            raise FileNotFoundError(f"{env_var}={explicit!r} holds no {marker}")
        require_fixture(folder / marker, what)
        return folder

    return find


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """../shared/data (real sample files); see :func:`require_fixture_path` for what happens where it is absent."""
    return require_fixture_path(SHARED_DATA, "real sample data")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
