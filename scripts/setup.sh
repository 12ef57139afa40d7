#!/usr/bin/env bash
# One-step set-up on a fresh machine: a local virtual environment with everything the bundles, the demo and
# the tests need. torch is installed first and pinned: an open torch range would pull several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
echo "[setup] installing torch==2.13.0 (CPU build)"
.venv/bin/python -m pip install --quiet -c scripts/constraints.txt "torch==2.13.0"
echo "[setup] installing the project and its demo/test extras"
# every version comes from scripts/constraints.txt, the pins the bundles' metadata.json also name
.venv/bin/python -m pip install --quiet -c scripts/constraints.txt -e ".[demo,report,test,dev]"
.venv/bin/python -c "import torch, monai, transformers, peft; print(f'[setup] torch {torch.__version__}, monai {monai.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"
# Serving in MONAI Label (apps/monailabel, tests/monailabel): its own environment, .venv-monailabel, and Orthanc,
# its DICOMweb plugin and Chromium from Debian. MEDVLM_SKIP_MONAILABEL=1 skips it (its tests then fail in CI).
if [ "${MEDVLM_SKIP_MONAILABEL:-0}" != "1" ]; then
    bash scripts/setup_monailabel.sh
fi
