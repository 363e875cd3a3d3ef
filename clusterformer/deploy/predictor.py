"""``ExportedPredictor``: :class:`~clusterformer.d2.predictor.ClusterFormerPredictor`'s outputs from
a TorchScript or ONNX export (Detectron2 layer).

Everything around the network is the eager predictor's own code, not a copy: the test-time
transform and input dict (``prepare_inputs``), normalisation and padding
(``model.preprocess_images``) and post-processing (``model.inference``, i.e.
:mod:`clusterformer.modeling.postprocessing`). The Detectron2 model is built from the config for
those methods only; its weights are not loaded or used, the export computes the raw outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from detectron2.config import CfgNode

from ..d2.predictor import ClusterFormerPredictor
from .runtime import ExportedModel


class ExportedPredictor(ClusterFormerPredictor):
    """Like :class:`ClusterFormerPredictor`, with the network run by an export.

    Args:
        cfg: the config the export was made from (test transform, thresholds, classes).
        export_path: the ``.ts`` or ``.onnx`` file of ``tools/deploy/export_model.py``.
        confidence_threshold: as in :class:`ClusterFormerPredictor`.
        num_threads: ONNX Runtime intra-op threads (``None``: its default).

    The export accepts one input size only (see :mod:`clusterformer.deploy.export`): an image
    whose transformed, padded size differs raises ValueError naming both sizes. Cluster maps
    (``predict_with_clusters``) need the eager backbone and are not available.
    """

    def __init__(
        self,
        cfg: CfgNode,
        export_path: Path,
        confidence_threshold: Optional[float] = None,
        num_threads: Optional[int] = None,
    ):
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
        self.exported = ExportedModel(export_path, num_threads=num_threads)
        super().__init__(cfg, confidence_threshold=confidence_threshold)
        kind = self.exported.metadata.kind
        expected = "classification" if self._is_classifier else "segmentation"
        if kind != expected:
            raise ValueError(
                f"{export_path} is a {kind} export but {cfg.MODEL.META_ARCHITECTURE} is a "
                f"{expected} model; use the config the export was made from"
            )

    @property
    def _is_classifier(self) -> bool:
        return not hasattr(self.model, "inference")

    def _load_weights(self) -> None:
        """Nothing to load: the export holds the weights."""

    def __call__(self, image: np.ndarray, format: str = "BGR") -> Dict[str, Any]:
        """Detectron2-format outputs for one ``(H, W, 3)`` uint8 image, as
        :meth:`ClusterFormerPredictor.__call__`."""
        inputs, _ = self.prepare_inputs(image, format)
        if self._is_classifier:
            images = self.model.preprocess_images([inputs])
            logits = self.exported(images)["logits"]
            # ClusterFormerClassifier.forward's inference output.
            return {"class_scores": logits.float().softmax(-1)[0]}
        images = self.model.preprocess_images([inputs])
        outputs = self.exported(images.tensor)
        result = self.model.inference(outputs, [inputs], images)[0]
        return self._filtered(result)

    def predict_with_clusters(self, image: np.ndarray, format: str = "BGR"):
        raise NotImplementedError(
            "ExportedPredictor: cluster maps record the eager backbone's assignments, which an "
            "export does not return; use ClusterFormerPredictor (--backend pytorch)"
        )
