#!/usr/bin/env bash
# Apply the MONAI model zoo's code-format settings (pinned in tests/zoo_ci/model_zoo: its setup.cfg for isort and
# flake8, its pyproject.toml for black, its pre-commit pretty-format-json and end-of-file-fixer) to common/ and the
# bundles' configs, once, after merging; then check flake8 and our own ruff, which is configured to agree.
#   bash scripts/zoo_format.sh            # rewrite in place
#   bash scripts/zoo_format.sh --check    # change nothing; exit non-zero when a file would change
# The packaging step (scripts/package_bundle.py) applies the same isort/black/pretty-format-json to the zip's copy,
# so a zip passes the zoo's checks whatever the tree's state; this script keeps the tree equal to it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
ZOO=tests/zoo_ci/model_zoo
CHECK=()
JSON_FIX=(--autofix)
if [ "${1:-}" = "--check" ]; then CHECK=(--check); JSON_FIX=(); fi
# the vendored package is third-party where the zoo runs isort (models/<bundle>/ is not one of its source paths)
"$PY" -m isort --settings-path "$ZOO/setup.cfg" --thirdparty common "${CHECK[@]}" common
"$PY" -m black --config "$ZOO/pyproject.toml" --skip-magic-trailing-comma "${CHECK[@]}" common
# the zoo's hook: --autofix --no-sort-keys --indent=4 (with --check: report only)
# (a fixer exits 1 when it changed a file: fine when fixing, a failure with --check)
fixer() { if [ ${#CHECK[@]} -eq 0 ]; then "$PY" -m "$@" || true; else "$PY" -m "$@"; fi; }
fixer pre_commit_hooks.pretty_format_json "${JSON_FIX[@]}" --no-sort-keys --indent=4 bundles/*/configs/*.json
if [ ${#CHECK[@]} -eq 0 ]; then
    fixer pre_commit_hooks.end_of_file_fixer bundles/*/configs/* bundles/*/docs/* bundles/*/LICENSE bundles/*/large_files.yml
    fixer pre_commit_hooks.trailing_whitespace_fixer bundles/*/configs/* bundles/*/docs/* bundles/*/large_files.yml
fi
"$PY" -m flake8 --config "$ZOO/setup.cfg" common
"$PY" -m ruff check common
"$PY" -m ruff format --check common
echo "[zoo_format] common/ and the bundles' configs follow the model zoo's settings"
