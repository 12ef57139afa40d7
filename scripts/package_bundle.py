"""Package a bundle as a model-zoo style zip with ``common/`` vendored, so it runs standalone after download.

    python scripts/package_bundle.py frozen_projection [--out dist]
    python -m monai.bundle download --name frozen_projection --url file://$PWD/dist/frozen_projection_v0.1.0.zip \
        --bundle_dir ./downloaded
    cd downloaded/frozen_projection && python -m monai.bundle run --config_file configs/train.json --bundle_root .

The zip holds ``<name>/`` with the bundle's configs, docs, LICENSE and large_files.yml, plus ``<name>/common/``
(Python sources only). Run from inside the bundle folder, ``import common`` finds the vendored copy first.
Generated or trained files (models, eval, logs, cache, demo data) and sample data are never packaged.
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE_FILES = ("configs", "docs", "LICENSE", "large_files.yml")


def package(name: str, out_dir: Path) -> Path:
    bundle = ROOT / "bundles" / name
    metadata_file = bundle / "configs" / "metadata.json"
    if not metadata_file.is_file():
        raise FileNotFoundError(f"no bundle '{name}': {metadata_file} missing")
    version = json.loads(metadata_file.read_text())["version"]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}_v{version}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for entry in BUNDLE_FILES:
            path = bundle / entry
            files = (
                sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
            )
            for file in files:
                archive.write(file, f"{name}/{file.relative_to(bundle)}")
        for file in sorted((ROOT / "common").rglob("*.py")):
            archive.write(file, f"{name}/{file.relative_to(ROOT)}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", help="bundle names under bundles/")
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    args = parser.parse_args()
    for name in args.names:
        print(package(name, args.out))


if __name__ == "__main__":
    main()
