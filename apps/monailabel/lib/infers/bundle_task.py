"""One MONAI Label inference task per bundle: the bundle's own inference config, run for one image per request."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lib.bundle_config import BundleConfig, run_workflow
from lib.infers.requests import ADAPTERS

DESCRIPTIONS = {
    "ctclip_lora": "CT-CLIP + LoRA: P(present) per pathology of a chest CT (open vocabulary: params.class_names)",
    "cleft_cxr": "CLEFT: class probabilities of a chest X-ray for a label set (params.class_names)",
    "report_gen": "Report generation: a draft report of a chest X-ray",
    "frozen_projection": "Frozen projection: the reports nearest to an image's projected embedding (retrieval)",
}
DIMENSIONS = {"ctclip_lora": 3, "cleft_cxr": 2, "report_gen": 2, "frozen_projection": 2}


class BundleInferTask(BasicInferTask):
    """Classification-type task whose inferer is the bundle's ``initialize``/``run``/``finalize`` for one image.

    The network (and the other ``warm`` objects of the bundle's adapter) are built once, on the first request, and
    reused; each request gets a fresh parser of the same merged config with its own overrides (the image, a scratch
    output folder, the class list), so its output is the one ``python -m monai.bundle run`` writes for that file.
    Requests of one task run one at a time (one model, one set of warm objects).

    Args:
        bundle: the folder under ``bundles/``.
        config: the bundle's :class:`~lib.bundle_config.BundleConfig` (its files and start-up overrides).
    """

    def __init__(self, bundle: str, config: BundleConfig) -> None:
        self.bundle = bundle
        self.bundle_config = config
        self.adapter = ADAPTERS[bundle]()
        config.warm_ids = list(self.adapter.warm)
        if bundle == "frozen_projection" and not config.get("retrieval_manifest", ""):
            raise ValueError(
                "frozen_projection answers with the reports of a manifest: start the server with "
                "--conf frozen_projection.retrieval_manifest <manifest with a 'report' column>"
            )
        names = config.get("class_names", None) if bundle == "ctclip_lora" else config.get("label_set", None)
        self.default_names = list(names) if names is not None else []
        super().__init__(
            path=None,
            network=None,
            type=InferType.CLASSIFICATION,
            labels=self.default_names or None,
            dimension=DIMENSIONS[bundle],
            description=DESCRIPTIONS[bundle],
            config={"class_names": self.default_names} if self.default_names else {},
        )
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        return True

    def pre_transforms(self, data=None):
        return []  # the bundle's own preprocessing runs inside run_inferer

    def post_transforms(self, data=None):
        return []

    def inverse_transforms(self, data=None):
        return None

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        """The bundle's inference on ``data["image"]`` (a local path the datastore gave); the result in ``result``."""
        params = {k: v for k, v in data.items() if k not in ("image_path",)}
        with self._lock, tempfile.TemporaryDirectory(prefix=f"{self.bundle}_infer_") as scratch:
            data["result"] = self.infer_file(str(data["image"]), params, Path(scratch))
        return data

    def infer_file(self, path: str, params: Mapping[str, Any], scratch: Path) -> dict[str, Any]:
        """The bundle's result for one local file (or DICOM series folder), as its inference writer wrote it."""
        overrides = self.adapter.overrides(path, params, scratch)
        objects = self.adapter.objects(overrides, self.default_names)
        parser = self.bundle_config.request_parser(overrides, objects)
        run_workflow(parser)
        self.adapter.remember(parser, overrides, self.default_names)
        return self.adapter.read(scratch)

    def writer(self, data: dict[str, Any], extension=None, dtype=None):
        """No label file: the JSON result only."""
        return None, dict(data["result"])
