"""Synthetic chest-X-ray-like demo data with real signal: the image content depends on the label, and the
report describes what the image shows.

Every image is a chest-like scene (bright body, two dark lung fields, a heart shadow, noise, random pose and
contrast). Each class adds its own finding, so a model can learn it from pixels, and a report sentence names
it, so a text encoder can align with it:

==================  =============================================  ======================================
class (pattern)     what the image shows                           report phrase (one of several)
==================  =============================================  ======================================
cardiomegaly        an enlarged, brighter heart shadow             "The cardiac silhouette is enlarged."
pleural effusion    the base of one lung filled in (bright)        "There is a right pleural effusion."
consolidation       a dense round opacity inside one lung          "Focal consolidation in the left lung."
edema               diffuse haze with streaks in both lungs        "Diffuse interstitial edema."
atelectasis         one lung field narrowed by a bright band       "Linear atelectasis at the right base."
no finding          the scene alone                                "The lungs are clear."
==================  =============================================  ======================================

Unknown class names cycle through the same patterns, so any label set gets learnable data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import ignite.distributed as idist
import numpy as np
from common.data.manifest import assign_patient_splits, write_manifest
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["CHEXPERT_5_CLASSES", "make_synthetic_cxr_dataset", "render_synthetic_cxr", "PATTERNS"]

CHEXPERT_5_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
PATTERNS = ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural effusion", "no finding")

_PHRASES = {
    "cardiomegaly": ["The cardiac silhouette is enlarged.", "Cardiomegaly is present.", "The heart is enlarged."],
    "pleural effusion": [
        "There is a {side} pleural effusion.",
        "A {side} pleural effusion blunts the costophrenic angle.",
    ],
    "consolidation": ["Focal consolidation in the {side} lung.", "There is a dense {side} lung opacity."],
    "edema": ["Diffuse interstitial edema.", "Bilateral hazy opacities consistent with pulmonary edema."],
    "atelectasis": ["Linear atelectasis at the {side} base.", "There is {side} basilar atelectasis."],
    "no finding": ["The lungs are clear.", "No acute cardiopulmonary abnormality."],
}
_NORMAL_TAIL = ["No pneumothorax.", "The osseous structures are intact.", "No other acute findings."]


def _pattern_of(name: str, index: int) -> str:
    key = name.strip().lower().replace("_", " ")
    if key in PATTERNS:
        return key
    if key in ("normal", "healthy", "no findings"):
        return "no finding"
    return PATTERNS[index % (len(PATTERNS) - 1)]


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def render_synthetic_cxr(pattern: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Draw one image (size, size) uint8 showing ``pattern``; returns it and the side ('left'/'right') used."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    shift_y, shift_x = rng.normal(0, 0.02, 2)
    yy, xx = yy - shift_y, xx - shift_x
    image = np.full((size, size), 0.55, np.float32) + rng.normal(0, 0.03)
    lung_r = _ellipse(yy, xx, 0.5, 0.3, 0.3, 0.14)
    lung_l = _ellipse(yy, xx, 0.5, 0.7, 0.3, 0.14)
    image[lung_r | lung_l] = 0.2
    heart_scale = 1.0
    side = str(rng.choice(["right", "left"]))
    lung_side = lung_r if side == "right" else lung_l
    side_x = 0.3 if side == "right" else 0.7  # radiological convention: patient's right on image left
    if pattern == "cardiomegaly":
        heart_scale = 1.6
    heart = _ellipse(yy, xx, 0.62, 0.52, 0.12 * heart_scale, 0.1 * heart_scale)
    image[heart] = 0.6 if pattern != "cardiomegaly" else 0.72
    if pattern == "pleural effusion":
        image[lung_side & (yy > 0.62 + rng.normal(0, 0.02))] = 0.62
    elif pattern == "consolidation":
        cy = 0.45 + rng.normal(0, 0.05)
        image[_ellipse(yy, xx, cy, side_x, 0.07, 0.05)] = 0.7
    elif pattern == "edema":
        streaks = 0.12 * (np.sin(xx * 60 + rng.uniform(0, 6)) > 0.3)
        image[lung_r | lung_l] += 0.18 + streaks[lung_r | lung_l]
    elif pattern == "atelectasis":
        band = np.abs(yy - (0.68 + rng.normal(0, 0.02))) < 0.025
        image[lung_side & band] = 0.75
        image[lung_side & (yy > 0.7)] = 0.5
    image += rng.normal(0, 0.06, image.shape).astype(np.float32)  # quantum noise
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-0.05, 0.05)
    image = np.clip(image * gain + offset, 0, 1)
    return (image * 255).astype(np.uint8), side


def _report(pattern: str, side: str, rng: np.random.Generator) -> str:
    phrase = str(rng.choice(_PHRASES[pattern])).format(side=side)
    tail = str(rng.choice(_NORMAL_TAIL))
    return f"FINDINGS: {phrase} {tail} IMPRESSION: {phrase}"


@idist.one_rank_first()  # under DDP, rank 0 writes the files once and the other ranks reuse them
def make_synthetic_cxr_dataset(
    out_dir: str | Path,
    num_samples: int = 200,
    class_names: Sequence[str] = (*CHEXPERT_5_CLASSES, "No Finding"),
    image_size: int = 64,
    seed: int = 0,
    split_fractions: dict[str, float] | None = None,
    studies_per_patient: int = 2,
    manifest_name: str = "manifest.csv",
    overwrite: bool = False,
) -> Path:
    """Write PNG images, reports and a manifest; returns the manifest path.

    The manifest has ``image`` (relative path), ``report``, ``label`` (class index), ``label_name``, one 0/1
    column per class, ``patient_id`` and a patient-level ``split``. Classes are balanced (round robin).
    An existing manifest is kept unless ``overwrite`` (so a re-run of a demo reuses its data).
    """
    out_dir = Path(out_dir)
    manifest = out_dir / manifest_name
    if manifest.is_file() and not overwrite:
        logger.info("synthetic data already at %s; reusing it", manifest)
        return manifest
    if num_samples < len(class_names):
        raise ValueError(f"num_samples={num_samples} is smaller than the {len(class_names)} classes")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    rng = np.random.default_rng(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(num_samples):
        label = index % len(class_names)
        pattern = _pattern_of(class_names[label], label)
        pixels, side = render_synthetic_cxr(pattern, image_size, rng)
        relative = f"images/{index:05d}.png"
        Image.fromarray(pixels).save(out_dir / relative)
        row = {
            "image": relative,
            "report": _report(pattern, side, rng),
            "label": label,
            "label_name": class_names[label],
            "patient_id": f"P{index // max(studies_per_patient, 1):05d}",
        }
        row.update({name: int(label == c) for c, name in enumerate(class_names)})
        rows.append(row)
    rows = assign_patient_splits(rows, split_fractions, seed=seed)
    write_manifest(rows, manifest)
    logger.info("wrote %d synthetic studies to %s", num_samples, manifest)
    return manifest
