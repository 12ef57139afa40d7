"""MONAI Label app serving the repository's bundles (JSON results, no label masks).

    monailabel start_server --host 127.0.0.1 --app apps/monailabel --studies <folder or DICOMweb root> \
        --conf models ctclip_lora,cleft_cxr,report_gen --conf ctclip_lora.bundle_root /path/to/ctclip_lora ...

Every ``--conf <bundle>.<key> <value>`` is an override of that bundle's inference config (see lib/bundle_config.py).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lib.bundle_config import INFERENCE_CONFIGS, BundleConfig, bundle_overrides  # noqa: E402
from lib.infers.bundle_task import BundleInferTask  # noqa: E402
from lib.infers.requests import ADAPTERS, RequestError  # noqa: E402

logger = logging.getLogger(__name__)


class MyApp(MONAILabelApp):
    """The bundles named in ``--conf models`` (comma-separated; default: all served bundles)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        names = [m.strip() for m in conf.get("models", ",".join(ADAPTERS)).split(",") if m.strip()]
        unknown = [m for m in names if m not in ADAPTERS]
        if unknown:
            raise ValueError(f"--conf models names {unknown}; served bundles: {sorted(ADAPTERS)}")
        self.models = names
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="medvlm-bundles",
            description="The repository's MONAI Bundles (CT-CLIP LoRA, CLEFT, report generation, frozen projection), "
            "JSON results",
            version="0.1.0",
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for bundle in self.models:
            extra, overrides = bundle_overrides(self.conf, bundle)
            logger.info(f"{bundle}: configs {INFERENCE_CONFIGS[bundle] + tuple(extra)}, overrides {overrides}")
            infers[bundle] = BundleInferTask(bundle, BundleConfig(bundle, extra, overrides, warm=()))
        return infers

    def _download_dcmqi_tools(self):
        """Nothing to download: this app writes no DICOM SEG (MONAI Label fetches dcmqi from the internet here)."""

    def init_trainers(self):
        return {}

    def init_strategies(self):
        return {}

    def init_scoring_methods(self):
        return {}

    def infer(self, request: dict[str, Any], datastore=None):
        """MONAI Label's inference, with clear 4xx answers for requests it cannot serve (it answers a bare 500)."""
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(404, f"unknown task {model!r}; this server has {sorted(self._infers)} (GET /info/)")
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image):
            store = datastore or self.datastore()
            try:
                uri = store.get_image_uri(image)
            except Exception as error:  # the DICOMweb datastore raises on an unknown series
                raise HTTPException(404, f"unknown image id {image!r} ({type(error).__name__}: {error})") from error
            if not uri or not os.path.exists(uri) or (os.path.isdir(uri) and not os.listdir(uri)):
                raise HTTPException(
                    404, f"unknown image id {image!r}: the datastore has no such image (GET /datastore/)"
                )
        try:
            return super().infer(request, datastore)
        except HTTPException:
            raise
        except (RequestError, ValueError, FileNotFoundError, RuntimeError) as error:
            logger.exception(f"{model}: cannot serve {image!r}")
            cause = root_cause(error)
            raise HTTPException(
                422, f"{model} cannot serve image {image!r}: {type(cause).__name__}: {cause}"
            ) from error


def root_cause(error: BaseException) -> BaseException:
    """The first error of a chain: MONAI's config parser wraps a transform's error in ``Failed to evaluate ...``."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error
