"""A missing real-data fixture fails the run in CI (CI=true) and names the path; locally it is skipped."""

from __future__ import annotations

import pytest


def test_missing_fixture_fails_in_ci_naming_the_path(require_fixture, monkeypatch, tmp_path):
    missing = tmp_path / "shared" / "data" / "ctclip_reference"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true") as failure:
        require_fixture(missing, "CT-CLIP reference vectors")
    assert str(missing) in str(failure.value) and "CT-CLIP reference vectors" in str(failure.value)


@pytest.mark.parametrize("value", [None, "", "false"])
def test_missing_fixture_is_skipped_with_the_reason_outside_ci(require_fixture, monkeypatch, tmp_path, value):
    missing = tmp_path / "absent.json"
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="absent.json"):
        require_fixture(missing, "a key list")


def test_present_fixture_is_returned_in_and_out_of_ci(require_fixture, monkeypatch, tmp_path):
    present = tmp_path / "keys.json"
    present.write_text("{}")
    for value in ("true", ""):
        monkeypatch.setenv("CI", value)
        assert require_fixture(str(present), "a key list") == present


def test_no_test_skips_a_missing_fixture_by_itself(repo_root):
    """Every fixture check goes through require_fixture: a bare ``pytest.skip`` would pass CI without the data."""
    offenders = [
        f"{path.relative_to(repo_root)}:{number}"
        for path in sorted((repo_root / "tests").rglob("*.py"))
        if path.name not in ("conftest.py", "test_fixture_paths.py") or path.parent != repo_root / "tests"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "pytest.skip(" in line or "importorskip(" in line
    ]
    assert offenders == []
