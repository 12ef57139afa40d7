"""Generated chest-CT-like volumes with learnable findings, reports and multi-label manifests (demo and tests).

Each volume is a small int16 NIfTI in Hounsfield units (LPS, 0.75 x 0.75 x 1.5 mm, like CT-RATE v2): air
outside an elliptic body, two lungs at about -850 HU, a heart. Each pathology is present independently and
adds its own finding, so an image encoder can learn it from voxels, and the report names what is present and
what is not (CT-RATE style findings). Unknown pathology names cycle through the same finding patterns.

pattern          what the volume shows
nodule           a bright sphere (+80 HU) in one lung
effusion         fluid (+15 HU) filling the lower posterior part of a lung
emphysema        darker lungs (-960 HU) with air holes
cardiomegaly     a heart twice as wide
consolidation    a dense (-50 HU) block in a lung
calcification    very bright (+700 HU) specks along a central vessel
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import ignite.distributed as idist
import nibabel as nib
import numpy as np
from common.data.manifest import assign_patient_splits, write_manifest

logger = logging.getLogger(__name__)

__all__ = ["DEMO_PATHOLOGIES", "PATTERNS", "make_synthetic_ct_dataset", "render_synthetic_ct"]

PATTERNS = ("nodule", "effusion", "emphysema", "cardiomegaly", "consolidation", "calcification")
_KNOWN = {
    "Lung nodule": "nodule",
    "Pleural effusion": "effusion",
    "Emphysema": "emphysema",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Arterial wall calcification": "calcification",
    "Coronary artery wall calcification": "calcification",
}
#: The demo's label set: four CT-RATE pathologies with distinct findings.
DEMO_PATHOLOGIES: tuple[str, ...] = ("Lung nodule", "Pleural effusion", "Emphysema", "Cardiomegaly")
_SPACING = (0.75, 0.75, 1.5)


def _pattern_of(name: str, index: int) -> str:
    return _KNOWN.get(name, PATTERNS[index % len(PATTERNS)])


def render_synthetic_ct(present: Sequence[str], shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Render one volume (X, Y, Z) int16 HU with the findings of the ``present`` patterns.

    Axes follow LPS: x toward the patient's left, y toward posterior, z toward superior.
    """
    nx, ny, nz = shape
    x, y, z = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), np.linspace(-1, 1, nz), indexing="ij")
    vol = np.full(shape, -1000.0)
    body = (x / 0.92) ** 2 + (y / 0.75) ** 2 < 1
    vol[body] = 40.0
    lung_density = -960.0 if "emphysema" in present else -850.0
    lungs = []
    for cx in (-0.42, 0.42):
        lung = ((x - cx) / 0.32) ** 2 + (y / 0.55) ** 2 + (z / 1.1) ** 2 < 1
        vol[lung] = lung_density
        lungs.append((cx, lung))
    if "emphysema" in present:
        holes = (rng.uniform(size=shape) < 0.08) & (lungs[0][1] | lungs[1][1])
        vol[holes] = -1000.0
    heart_rx = 0.34 if "cardiomegaly" in present else 0.17
    heart = (x / heart_rx) ** 2 + ((y + 0.2) / 0.25) ** 2 + ((z + 0.2) / 0.45) ** 2 < 1
    vol[heart] = 50.0
    side = rng.integers(0, 2)
    cx, lung = lungs[side]
    if "nodule" in present:
        ny0, nz0 = rng.uniform(-0.3, 0.3), rng.uniform(-0.5, 0.5)
        vol[((x - cx) / 0.14) ** 2 + ((y - ny0) / 0.14) ** 2 + ((z - nz0) / 0.28) ** 2 < 1] = 80.0
    if "effusion" in present:
        vol[lung & (y > 0.15) & (z < 0.2)] = 15.0
    if "consolidation" in present:
        vol[lung & (np.abs(x - cx) < 0.2) & (y < 0.0) & (z > 0.1)] = -50.0
    if "calcification" in present:
        specks = (np.abs(x) < 0.06) & (np.abs(y + 0.45) < 0.06) & (rng.uniform(size=shape) < 0.5)
        vol[specks] = 700.0
    vol += rng.normal(0, 20, size=shape)  # scanner noise
    return np.clip(vol, -1024, 3071).astype(np.int16)


def _report(names: Sequence[str], present: Sequence[bool], rng: np.random.Generator) -> str:
    sentences = []
    for name, is_present in zip(names, present):
        lower = name.lower()
        if is_present:
            sentences.append(
                str(rng.choice([f"{name} is present.", f"There is {lower}.", f"Findings consistent with {lower}."]))
            )
        else:
            sentences.append(str(rng.choice([f"{name} is not present.", f"No {lower}.", f"There is no {lower}."])))
    order = rng.permutation(len(sentences))
    return " ".join(sentences[i] for i in order)


@idist.one_rank_first()  # under DDP, rank 0 writes the files once and the other ranks reuse them
def make_synthetic_ct_dataset(
    out_dir: str | Path,
    num_samples: int = 60,
    class_names: Sequence[str] = DEMO_PATHOLOGIES,
    shape: Sequence[int] = (32, 32, 24),
    prevalence: float = 0.4,
    seed: int = 0,
    split_fractions: dict[str, float] | None = None,
    manifest_name: str = "manifest.csv",
    overwrite: bool = False,
) -> Path:
    """Write NIfTI volumes, reports, ``metadata.csv`` (slope 1, intercept -1024, as CT-RATE lists for data that
    are already HU) and a manifest; returns the manifest path.

    The manifest has ``image`` (relative path), ``report``, one 0/1 column per pathology, ``patient_id`` and a
    patient-level ``split``. An existing manifest is reused unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    manifest = out_dir / manifest_name
    if manifest.is_file() and not overwrite:
        logger.info("synthetic CT data already at %s; reusing it", manifest)
        return manifest
    if not class_names:
        raise ValueError("at least one pathology name is needed")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes of at least 8 voxels, got {tuple(shape)}")
    if not 0 < prevalence < 1:
        raise ValueError(f"prevalence must be in (0, 1), got {prevalence}")
    rng = np.random.default_rng(seed)
    (out_dir / "volumes").mkdir(parents=True, exist_ok=True)
    affine = np.diag([-_SPACING[0], -_SPACING[1], _SPACING[2], 1.0])  # LPS on disk
    rows, meta = [], []
    for index in range(num_samples):
        present = rng.uniform(size=len(class_names)) < prevalence
        patterns = [_pattern_of(n, i) for i, n in enumerate(class_names) if present[i]]
        volume = render_synthetic_ct(patterns, shape, rng)
        relative = f"volumes/synth_{index:04d}.nii.gz"
        nib.save(nib.Nifti1Image(volume, affine), str(out_dir / relative))
        row = {"image": relative, "report": _report(class_names, present, rng), "patient_id": f"P{index:05d}"}
        row.update({name: int(flag) for name, flag in zip(class_names, present)})
        rows.append(row)
        meta.append({"VolumeName": Path(relative).name, "RescaleSlope": 1, "RescaleIntercept": -1024})
    rows = assign_patient_splits(rows, split_fractions or {"train": 0.6, "val": 0.2, "test": 0.2}, seed=seed)
    write_manifest(meta, out_dir / "metadata.csv")
    write_manifest(rows, manifest)
    logger.info("wrote %d synthetic CT volumes to %s", num_samples, manifest)
    return manifest
