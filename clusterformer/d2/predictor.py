"""``ClusterFormerPredictor``: a trained ClusterFormer model on single in-memory images.

Like Detectron2's ``DefaultPredictor``, it builds the model from a config, loads
``MODEL.WEIGHTS``, and runs one ``(H, W, 3)`` uint8 image at a time through *the same*
test-time transform as the config's test mapper (:func:`build_test_transform`), so its outputs
equal those of ``Trainer.build_test_loader`` + model on the same image. It also records what the
paper's explainability rests on: the cluster assignments of the backbone stages and of the
decoder (:meth:`ClusterFormerPredictor.predict_with_clusters`).

    from clusterformer import ClusterFormerPredictor
    predictor = ClusterFormerPredictor(cfg, confidence_threshold=0.5)
    outputs = predictor(cv2.imread("photo.jpg"))  # BGR, as OpenCV reads it
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from torch import Tensor, nn

from ..data.dataset_mappers import InputGeometry, build_test_transform, image_to_chw_tensor
from ..data.datasets.class_metadata import class_metadata
from ..engine.checkpointer import ClusterFormerCheckpointer
from ..modeling.backbone.clusterformer import ClusterFormerBackbone

logger = logging.getLogger(__name__)

# What a model can be asked to show; each maps to the output key it needs.
TASKS = ("panoptic", "instance", "semantic", "detection", "classification")
TASK_OUTPUT_KEYS = {
    "panoptic": "panoptic_seg",
    "instance": "instances",
    "semantic": "sem_seg",
    "detection": "instances",
    "classification": "class_scores",
}
CLASSIFIER_META_ARCHITECTURES = ("ClusterFormerClassifier",)


def infer_task(cfg: CfgNode) -> str:
    """The task a config's model is meant for: "classification" for a classifier, "detection" for
    a box-only decoder (``BOX_ON`` without ``MASK_ON``), else the richest enabled segmentation
    output (panoptic, then instance, then semantic)."""
    if cfg.MODEL.META_ARCHITECTURE in CLASSIFIER_META_ARCHITECTURES:
        return "classification"
    decoder = cfg.MODEL.get("CLUSTER_DECODER", None)
    if decoder is None:
        raise ValueError(
            f"Cannot infer the task of MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}: "
            "not a ClusterFormer config (no MODEL.CLUSTER_DECODER); pass the task explicitly"
        )
    if decoder.get("BOX_ON", False) and not decoder.get("MASK_ON", True):
        return "detection"
    test = decoder.TEST
    for task, key in (("panoptic", "PANOPTIC_ON"), ("instance", "INSTANCE_ON")):
        if test.get(key, False):
            return task
    if test.get("SEMANTIC_ON", False):
        return "semantic"
    if test.get("DETECTION_ON", False):
        return "detection"
    raise ValueError(
        "No inference output is enabled in MODEL.CLUSTER_DECODER.TEST "
        "(SEMANTIC_ON / INSTANCE_ON / PANOPTIC_ON are all False)"
    )


def enable_task_outputs(cfg: CfgNode, task: str) -> CfgNode:
    """A copy of ``cfg`` whose model produces the output ``task`` needs (turns on the matching
    ``MODEL.CLUSTER_DECODER.TEST.*_ON`` switch); raises when the model cannot do the task."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}")
    is_classifier = cfg.MODEL.META_ARCHITECTURE in CLASSIFIER_META_ARCHITECTURES
    if (task == "classification") != is_classifier:
        raise ValueError(
            f"Task {task!r} does not fit MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}: "
            "classification needs a classifier config, the other tasks a ClusterFormer "
            "(segmentation / detection) config"
        )
    cfg = cfg.clone()
    cfg.defrost()
    switch = {"panoptic": "PANOPTIC_ON", "instance": "INSTANCE_ON", "semantic": "SEMANTIC_ON"}
    if task in switch:
        cfg.MODEL.CLUSTER_DECODER.TEST[switch[task]] = True
    elif task == "detection":
        decoder = cfg.MODEL.CLUSTER_DECODER
        # A box-only detector already returns instances; a mask model's instances carry boxes.
        if not (decoder.get("BOX_ON", False) or decoder.TEST.get("DETECTION_ON", False)):
            decoder.TEST.INSTANCE_ON = True
    cfg.freeze()
    return cfg


def filter_by_confidence(outputs: Dict[str, Any], threshold: float) -> Dict[str, Any]:
    """Drop instances with ``score < threshold`` and panoptic *thing* segments whose ``score`` is
    below it (their pixels become void, id 0). Stuff segments, ``sem_seg`` and ``class_scores``
    are kept. Returns a new dict; ``outputs`` is not modified."""
    outputs = dict(outputs)
    if "instances" in outputs:
        instances = outputs["instances"]
        outputs["instances"] = instances[instances.scores >= threshold]
    if "panoptic_seg" in outputs:
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        dropped = [s for s in segments_info if s.get("isthing") and s.get("score", 1.0) < threshold]
        if dropped:
            panoptic_seg = panoptic_seg.clone()
            for segment in dropped:
                panoptic_seg[panoptic_seg == segment["id"]] = 0
            segments_info = [s for s in segments_info if s not in dropped]
        outputs["panoptic_seg"] = (panoptic_seg, segments_info)
    return outputs


class _RecordingCheckpointer(ClusterFormerCheckpointer):
    """The project's checkpointer (no pickled code, shape policy) keeping the incompatible keys
    of its last load."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_weights(
    model: nn.Module, weights: str, allow_pickle: bool = False, use_ema_weights: bool = False
) -> None:
    """Load ``weights`` (a path or a Detectron2/URL path) into ``model``; raise when the file is
    missing or does not fit the model (missing parameters or different shapes), so a predictor
    never silently runs with random layers. Extra checkpoint keys are only logged.

    Like training, it reads checkpoints without running pickled code (``weights_only``; see
    :class:`~clusterformer.engine.ClusterFormerCheckpointer`) unless ``allow_pickle``
    (``MODEL.WEIGHTS_ALLOW_PICKLE``), for files you trust. ``use_ema_weights``
    (``MODEL_EMA.ENABLED``) loads the checkpoint's averaged weights where it has them."""
    if not weights:
        raise ValueError(
            "MODEL.WEIGHTS is empty: the predictor needs a trained checkpoint "
            "(e.g. MODEL.WEIGHTS output/model_final.pth)"
        )
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS={weights!r}: no such checkpoint file")
    checkpointer = _RecordingCheckpointer(
        model, allow_pickle=allow_pickle, use_ema_weights=use_ema_weights
    )
    checkpointer.load(weights)
    incompatible = checkpointer.incompatible
    if incompatible is None:
        return
    problems = []
    if incompatible.missing_keys:
        problems.append(
            f"{len(incompatible.missing_keys)} model parameters are not in it "
            f"(e.g. {incompatible.missing_keys[:5]})"
        )
    if incompatible.incorrect_shapes:
        shapes = [f"{k}: checkpoint {a} vs model {b}" for k, a, b in incompatible.incorrect_shapes]
        problems.append(f"{len(shapes)} parameters have other shapes (e.g. {shapes[:3]})")
    if problems:
        raise ValueError(
            f"Checkpoint {weights!r} does not fit the model built from the config: "
            + "; ".join(problems)
            + ". Use the config the checkpoint was trained with."
        )
    if incompatible.unexpected_keys:
        logger.warning(
            "Checkpoint %s has %d keys the model does not use (e.g. %s)",
            weights,
            len(incompatible.unexpected_keys),
            incompatible.unexpected_keys[:5],
        )


def _tokens_to_input(tokens: Tensor, stride: int, input_hw: Tuple[int, int]) -> np.ndarray:
    """``(..., h, w)`` map at ``stride`` over the padded input -> ``(..., H_in, W_in)`` int64 over
    the model input (token ``(i, j)`` covers pixels ``[i s, (i + 1) s) x [j s, (j + 1) s)``)."""
    values = tokens.detach().cpu().numpy().astype(np.int64)
    values = np.repeat(np.repeat(values, stride, axis=-2), stride, axis=-1)
    if values.shape[-2] < input_hw[0] or values.shape[-1] < input_hw[1]:
        raise ValueError(
            f"A stride-{stride} map of {tuple(tokens.shape[-2:])} tokens does not cover the "
            f"model input {input_hw}"
        )
    return np.ascontiguousarray(values[..., : input_hw[0], : input_hw[1]])


def decoder_cluster_ids(assignment: Tensor) -> Tensor:
    """The decoder's cluster map: ``(Q, h, w)`` assignment (the ``cluster_assignment`` output,
    the last E-step's weights of every pixel over the queries) -> ``(h, w)`` int64, the query of
    largest weight at each pixel (``argmax(0)``), and -1 at the pixels every query's mask excluded
    (all weights 0). Those pixels belong to no cluster; ``argmax`` alone would put them in query 0.
    """
    if assignment.dim() != 3:
        raise ValueError(
            f"cluster_assignment must be (Q, h, w), got shape {tuple(assignment.shape)}"
        )
    assignment = assignment.float()
    ids = assignment.argmax(0)
    ids[assignment.sum(0) <= 0] = -1
    return ids


@dataclass
class ClusterMaps:
    """The cluster assignments of one image, at the model input's resolution.

    Attributes:
        geometry: where the model input lies in the original image
            (:meth:`InputGeometry.input_map_to_original` maps the arrays below onto it).
        backbone: per stage (``res2``..``res5``), ``(heads, H_in, W_in)`` int64 cluster ids of the
            last block's last E-step (ids are unique across windows).
        backbone_windows: per stage, ``(heads, H_in, W_in)`` int64 window index of each pixel.
        backbone_strides: per stage, its stride.
        decoder: ``(H_in, W_in)`` int64 query each pixel is assigned to by the decoder's last
            E-step (``cluster_assignment.argmax(0)``), -1 at pixels every query's mask excluded
            (``cluster_assignment.sum(0) == 0``; see :func:`decoder_cluster_ids`); None for a
            model without a clustering decoder.
        decoder_stride: the stride the decoder's assignment was computed at.
        query_classes: ``(Q,)`` each query's most likely class in the final predictions;
            ``num_classes`` = "no object".
        query_scores: ``(Q,)`` the probability of that class.
        estep_query_classes, estep_query_scores: the same for the queries as they entered the
            last decoder layer, i.e. the centres the last E-step started from (the previous
            layer's predictions, whose masks also restricted it). Each layer is matched to the
            targets on its own, so in a briefly trained model a query may change its class in
            the last layer; these say what the assigned clusters were.
    """

    geometry: InputGeometry
    backbone: Dict[str, np.ndarray] = field(default_factory=dict)
    backbone_windows: Dict[str, np.ndarray] = field(default_factory=dict)
    backbone_strides: Dict[str, int] = field(default_factory=dict)
    decoder: Optional[np.ndarray] = None
    decoder_stride: Optional[int] = None
    query_classes: Optional[np.ndarray] = None
    query_scores: Optional[np.ndarray] = None
    estep_query_classes: Optional[np.ndarray] = None
    estep_query_scores: Optional[np.ndarray] = None
    num_classes: Optional[int] = None


class ClusterFormerPredictor:
    """Build a ClusterFormer model from ``cfg``, load ``cfg.MODEL.WEIGHTS`` and predict on single
    images. Thread-unsafe (one model, eval mode, no gradients).

    Args:
        cfg: a Detectron2 config with the ClusterFormer keys (``add_clusterformer_config``).
        confidence_threshold: when given, instances and panoptic thing segments with a lower
            score are removed from the outputs (:func:`filter_by_confidence`).

    Attributes:
        model, cfg (frozen copy), metadata (of ``DATASETS.TEST[0]``, else ``DATASETS.TRAIN[0]``),
        input_format (``INPUT.FORMAT``), test_transform (the test mapper's transform).
    """

    def __init__(self, cfg: CfgNode, confidence_threshold: Optional[float] = None):
        self.cfg = cfg.clone()
        self.cfg.freeze()
        if confidence_threshold is not None and not 0.0 <= confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
        self.confidence_threshold = confidence_threshold
        if cfg.TEST.AUG.ENABLED:
            # Not an error: the config a model was trained and evaluated with is often reused.
            logger.warning(
                "TEST.AUG.ENABLED is True, but the predictor (and the demo and exports built on "
                "it) runs the model once per image: test-time augmentation is applied only by "
                "train_net.py's semantic-segmentation evaluation (docs/segmentation.md)."
            )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"INPUT.FORMAT={self.input_format!r}: the predictor supports 'RGB' or 'BGR'"
            )
        datasets = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
        # class_metadata: names of a data set whose classes Detectron2 reads only on loading.
        self.metadata = class_metadata(datasets[0]) if datasets else Metadata()
        self.test_transform = build_test_transform(cfg)
        self.model = build_model(self.cfg)
        self.model.eval()
        self._load_weights()

    def _load_weights(self) -> None:
        """Load ``MODEL.WEIGHTS`` into ``self.model`` (the exported-model predictor of
        :mod:`clusterformer.deploy.predictor` overrides it: its network is the export)."""
        cfg = self.cfg
        load_weights(
            self.model, cfg.MODEL.WEIGHTS, cfg.MODEL.WEIGHTS_ALLOW_PICKLE, cfg.MODEL_EMA.ENABLED
        )

    def prepare_inputs(
        self, image: np.ndarray, format: str = "BGR"
    ) -> Tuple[Dict[str, Any], InputGeometry]:
        """``(H, W, 3)`` uint8 image in ``format`` -> (the model's input dict, as the test mapper
        makes it: ``{"image": (3, H', W') uint8 in INPUT.FORMAT, "height": H, "width": W}``, the
        geometry of the transform)."""
        if not isinstance(image, np.ndarray):
            raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}; "
                "convert grayscale / RGBA / 16-bit images first "
                "(clusterformer.data.image_io.read_image_uint8 does)"
            )
        if format not in ("RGB", "BGR"):
            raise ValueError(f"format must be 'RGB' or 'BGR', got {format!r}")
        if format != self.input_format:
            image = image[:, :, ::-1]
        model_image, geometry = self.test_transform(np.ascontiguousarray(image))
        inputs = {
            "image": image_to_chw_tensor(model_image),
            "height": geometry.original_hw[0],
            "width": geometry.original_hw[1],
        }
        return inputs, geometry

    def __call__(self, image: np.ndarray, format: str = "BGR") -> Dict[str, Any]:
        """Detectron2-format outputs for one ``(H, W, 3)`` uint8 image (BGR as OpenCV reads it,
        or ``format="RGB"``): ``sem_seg``, ``panoptic_seg``, ``instances``,
        ``cluster_assignment`` for ClusterFormer; ``class_scores`` for the classifier. Spatial
        outputs have the original image size."""
        inputs, _ = self.prepare_inputs(image, format)
        with torch.no_grad():
            outputs = self.model([inputs])[0]
        return self._filtered(outputs)

    def predict_with_clusters(
        self, image: np.ndarray, format: str = "BGR"
    ) -> Tuple[Dict[str, Any], ClusterMaps]:
        """Like ``__call__``, plus the cluster assignments of the backbone stages and of the
        decoder (:class:`ClusterMaps`), which the model returns when asked
        (``model(inputs, return_cluster_ids=True)``; no hooks, the model is not modified)."""
        inputs, geometry = self.prepare_inputs(image, format)
        backbone = self.model.backbone
        if not isinstance(backbone, ClusterFormerBackbone):
            raise TypeError(
                f"The backbone {type(backbone).__name__} does not record cluster assignments; "
                "cluster maps need the ClusterFormer backbone (MODEL.BACKBONE.NAME D2ClusterFormer)"
            )
        with torch.no_grad():
            outputs = dict(self.model([inputs], return_cluster_ids=True)[0])
        # What the maps are made of; the returned outputs are those of __call__.
        stage_ids = outputs.pop("cluster_ids")
        query_logits = outputs.pop("query_logits", None)
        estep_logits = outputs.pop("estep_query_logits", None)
        decoder_stride = outputs.pop("cluster_assignment_stride", None)

        input_hw = geometry.input_hw
        maps = ClusterMaps(geometry=geometry)
        for name, stage in stage_ids.items():
            ids_in = _tokens_to_input(stage.ids, stage.stride, input_hw)
            maps.backbone[name] = ids_in
            maps.backbone_windows[name] = ids_in // stage.num_centres
            maps.backbone_strides[name] = stage.stride

        if "cluster_assignment" in outputs and decoder_stride is not None:
            query = decoder_cluster_ids(outputs["cluster_assignment"])
            maps.decoder = _tokens_to_input(query, decoder_stride, input_hw)
            maps.decoder_stride = decoder_stride
        if query_logits is not None:
            scores, classes = query_logits.detach().float().cpu().softmax(-1).max(-1)
            maps.query_classes, maps.query_scores = classes.numpy(), scores.numpy()
            maps.num_classes = query_logits.shape[-1] - 1
        if estep_logits is not None:
            scores, classes = estep_logits.detach().float().cpu().softmax(-1).max(-1)
            maps.estep_query_classes, maps.estep_query_scores = classes.numpy(), scores.numpy()
        return self._filtered(outputs), maps

    def _filtered(self, outputs: Dict[str, Any]) -> Dict[str, Any]:
        if self.confidence_threshold is None:
            return outputs
        return filter_by_confidence(outputs, self.confidence_threshold)
