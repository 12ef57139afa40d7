"""Run the MONAI model zoo's own ``ci/verify_bundle.py`` (pinned copy in ``model_zoo/ci``) on one bundle.

    python tests/zoo_ci/run_zoo_checks.py --models <folder holding <bundle>/> --bundle <name> --mode min|full \
        [--repository-form]

The zoo's script files are unmodified; at run time the exclusion lists of its ``bundle_custom_data.py`` are
extended, in place, with this project's entries from ``exclusions.json`` (as a zoo pull request would add them to
that file), before ``verify_bundle.verify`` runs. ``--repository-form`` also applies the entries that hold only for
the bundle folders of this repository.

``custom_net_config_dict`` (``{bundle: {"net_id": ...}}``) names the network the zoo's shape and TorchScript checks
build, in the meaning the zoo's ``ci/bundle_custom_data.py`` gave that dict (default ``network_def``). The pinned
``verify_bundle.py`` has no such dict: its ``_get_net_id`` answers per bundle in code (the zoo's own generative
bundles return ``autoencoder_def``), where a zoo pull request adds a bundle's branch. The runner does the same at
run time: ``_get_net_id`` answers from the dict for the bundles it names and is the zoo's function otherwise.

The zoo's CI prepares ``<models>/model_info.json`` and ``<bundle>/eval/schema.json`` (its
``prepare_schema.py`` downloads the schema); this runner writes them offline: an empty model_info (a new bundle) and
the schema kept in ``schemas/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ZOO_CI = HERE / "model_zoo" / "ci"
SCHEMA = HERE.parents[1] / "schemas" / "meta_schema_20240725.json"


def extend_exclusions(bundle: str, repository_form: bool) -> None:
    """Add ``bundle`` to the zoo's exclusion lists named in ``exclusions.json`` (the module's own list objects)."""
    import bundle_custom_data

    entries = json.loads((HERE / "exclusions.json").read_text())
    groups = [entries] + ([entries["repository_form"]] if repository_form else [])
    for group in groups:
        for list_name, reasons in group.items():
            if not list_name.startswith("exclude_") or bundle not in reasons:
                continue
            getattr(bundle_custom_data, list_name).append(bundle)
            print(f"[zoo-ci] {list_name} += {bundle}: {reasons[bundle]}")


def extend_net_ids(bundle: str) -> None:
    """Give the zoo's checks ``bundle``'s net id from ``exclusions.json``'s ``custom_net_config_dict``.

    The dict goes into ``bundle_custom_data`` (created there, as the pinned copy has none), and the pinned
    ``verify_bundle._get_net_id`` answers from it for ``bundle`` (its own answer for every other bundle).
    """
    import bundle_custom_data
    import verify_bundle

    entry = json.loads((HERE / "exclusions.json").read_text()).get("custom_net_config_dict", {}).get(bundle)
    if entry is None:
        return
    if set(entry) != {"net_id", "reason"}:
        raise ValueError(f"exclusions.json: custom_net_config_dict[{bundle!r}] needs exactly 'net_id' and 'reason'")
    custom = getattr(bundle_custom_data, "custom_net_config_dict", None)
    if custom is None:
        custom = bundle_custom_data.custom_net_config_dict = {}
    custom[bundle] = {"net_id": entry["net_id"]}
    zoo_get_net_id = verify_bundle._get_net_id

    def _get_net_id(name: str) -> str:
        return custom[name]["net_id"] if name in custom else zoo_get_net_id(name)

    verify_bundle._get_net_id = _get_net_id
    print(f"[zoo-ci] custom_net_config_dict[{bundle}] = {custom[bundle]}: {entry['reason']}")


def prepare(models: Path, bundle: str) -> None:
    """What the zoo's CI writes before verifying: model_info.json and the bundle's eval/schema.json."""
    metadata = json.loads((models / bundle / "configs" / "metadata.json").read_text())
    if Path(metadata["schema"]).name != SCHEMA.name:
        raise ValueError(f"{bundle}: metadata schema {metadata['schema']} is not the one kept in {SCHEMA}")
    model_info = models / "model_info.json"
    if not model_info.exists():
        model_info.write_text("{}")
    (models / bundle / "eval").mkdir(exist_ok=True)
    shutil.copyfile(SCHEMA, models / bundle / "eval" / "schema.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--mode", choices=("min", "full"), required=True)
    parser.add_argument("--repository-form", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ZOO_CI))
    prepare(args.models.resolve(), args.bundle)
    extend_exclusions(args.bundle, args.repository_form)
    extend_net_ids(args.bundle)
    import verify_bundle

    verify_bundle.verify(args.bundle, str(args.models.resolve()), args.mode)
    print(f"[zoo-ci] {args.bundle}: verify_bundle {args.mode} passed")


if __name__ == "__main__":
    main()
