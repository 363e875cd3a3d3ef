"""``ClusterFormer``: the universal segmentation and detection meta-architecture (Detectron2
layer).

It is :class:`~clusterformer.modeling.segmenter.ClusterFormerSegmenter` plus what Detectron2
expects of a meta-architecture: it takes the list of dicts a dataset mapper produces, normalises
and pads the images, computes the training losses from ``instances`` targets, and at inference
returns Detectron2's standard outputs (``sem_seg``, ``panoptic_seg``, ``instances``) so its
evaluators and ``Visualizer`` work unchanged. The builders live in :mod:`.builders`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Set

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from ...data.dataset_mappers import class_list_key
from ...data.datasets.class_metadata import check_num_classes, class_metadata
from ...modeling.box_ops import box_xyxy_to_cxcywh
from ...modeling.criterion import SetCriterion
from ...modeling.postprocessing import (
    boxes_to_output_size,
    detection_inference,
    instance_inference,
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
)
from ...modeling.segmenter import ClusterFormerSegmenter
from .builders import (
    build_criterion,
    build_pixel_decoder,
    build_transformer_decoder,
    validate_config,
)

__all__ = [
    "ClusterFormer",
    "build_criterion",
    "build_pixel_decoder",
    "build_transformer_decoder",
    "thing_ids_from_metadata",
    "validate_config",
]


def thing_ids_from_metadata(metadata) -> Set[int]:
    """Contiguous ids of the thing classes: from ``thing_dataset_id_to_contiguous_id`` when the
    data set distinguishes things from stuff, else every class (an instance-only data set)."""
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if mapping:
        return set(mapping.values())
    return set(range(len(metadata.get("thing_classes", []))))


@META_ARCH_REGISTRY.register()
class ClusterFormer(ClusterFormerSegmenter):
    """Universal segmentation and detection with a clustering decoder (semantic, instance,
    panoptic segmentation and box detection; see :mod:`.builders` for the modes).

    Input: a list of mapper dicts with ``"image"`` ``(3, H, W)`` uint8 in ``INPUT.FORMAT`` order,
    optional ``"height"``/``"width"`` (output size; default: the input size) and, in training,
    ``"instances"`` with ``gt_classes``, ``gt_masks`` (``BitMasks`` or a bool tensor; when the
    model predicts masks) and ``gt_boxes`` (absolute XYXY ``Boxes`` in the mapped image; when it
    predicts boxes).

    Boxes: the decoder's boxes are normalised ``(cx, cy, w, h)`` on the padded batch canvas it
    sees (``images.tensor``, every image at the top left); targets are normalised the same way,
    and predictions are mapped back by
    :func:`~clusterformer.modeling.postprocessing.boxes_to_output_size`.

    Training returns the weighted loss dict. Inference returns one dict per image with the enabled
    outputs: ``sem_seg`` ``(K, height, width)`` scores, ``panoptic_seg`` ``(seg (height, width)
    int32, segments_info)``, ``instances`` (instance segmentation: ``pred_masks``, ``pred_boxes``
    (predicted with ``BOX_ON``, else from the masks), ``scores``, ``pred_classes``; detection
    without masks: ``pred_boxes``, ``scores``, ``pred_classes``), and ``cluster_assignment``
    ``(Q, h, w)`` (the decoder's last E-step assignment of pixels to queries at the level it was
    computed, padding cropped) when the decoder clusters.

    ``forward(batched_inputs, return_cluster_ids=True)`` (inference with a ClusterFormer backbone)
    adds what cluster maps are drawn from, per image: ``cluster_ids`` ``{stage: StageClusterIds}``
    (ids ``(heads, ceil(h / s), ceil(w / s))`` int64 over the image's ``(h, w)`` model input, the
    hard clusters of each backbone stage's last block; with the stage's stride and centres per
    window), ``query_logits`` ``(Q, K + 1)`` (the final class logits of the queries),
    ``estep_query_logits`` ``(Q, K + 1)`` (those of the previous decoder layer, the centres the
    last E-step started from; absent without auxiliary outputs) and, with ``cluster_assignment``,
    ``cluster_assignment_stride`` (int, its stride over the model input).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        pixel_decoder: nn.Module,
        transformer_decoder: nn.Module,
        criterion: SetCriterion,
        size_divisibility: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        object_mask_threshold: float,
        overlap_threshold: float,
        test_topk_per_image: int,
        thing_ids: Set[int],
        mask_on: bool = True,
        box_on: bool = False,
        detection_on: bool = False,
        class_activation: str = "softmax",
        instance_largest_component: bool = False,
    ):
        """
        The arguments are trusted: :meth:`from_config` validates the config they come from
        (:func:`~.builders.validate_config`); explicit callers pass a consistent set.

        Args:
            mask_on, box_on: what the decoder predicts (``pred_masks``, ``pred_boxes``); the
                semantic, panoptic and instance outputs need ``mask_on``.
            detection_on: return box detections as ``instances`` (when ``instance_on`` does not
                already return instances, which then carry the predicted boxes); needs
                ``box_on``.
            class_activation: ``"softmax"`` or ``"sigmoid"`` (focal-loss models) class scores.
            instance_largest_component: instance masks (and the boxes taken from them) keep only
                their largest connected region (``instance_inference``).
        """
        super().__init__(backbone, pixel_decoder, transformer_decoder)
        self.criterion = criterion
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.semantic_on = semantic_on
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.test_topk_per_image = test_topk_per_image
        self.thing_ids = set(thing_ids)
        self.mask_on = mask_on
        self.box_on = box_on
        self.detection_on = detection_on
        self.class_activation = class_activation
        self.instance_largest_component = instance_largest_component

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        # Where the config enters: validated once, before anything is built.
        validate_config(cfg)
        backbone = build_backbone(cfg)
        d = cfg.MODEL.CLUSTER_DECODER
        test = d.TEST
        # Which classes are things comes from the data set (training set first, as Mask2Former).
        # class_metadata fills what Detectron2 sets only on loading (register_coco_instances).
        datasets = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
        thing_ids = thing_ids_from_metadata(class_metadata(datasets[0])) if datasets else set()
        if (test.INSTANCE_ON or test.DETECTION_ON) and not thing_ids:
            raise ValueError(
                "ClusterFormer: MODEL.CLUSTER_DECODER.TEST.INSTANCE_ON / DETECTION_ON need thing "
                f"classes in the metadata of DATASETS.TRAIN/TEST ({datasets or 'none set'}): "
                "thing_classes / thing_dataset_id_to_contiguous_id, or a json_file with COCO "
                "'categories'"
            )
        # The head's classes must be the mapper's class ids, or labels fall outside the head.
        check_num_classes(
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            datasets,
            class_list_key(cfg),
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        )
        return {
            "backbone": backbone,
            "pixel_decoder": build_pixel_decoder(cfg, backbone),
            "transformer_decoder": build_transformer_decoder(cfg),
            "criterion": build_criterion(cfg),
            "size_divisibility": d.SIZE_DIVISIBILITY or backbone.size_divisibility,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": test.SEMANTIC_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "thing_ids": thing_ids,
            "mask_on": d.MASK_ON,
            "box_on": d.BOX_ON,
            "detection_on": test.DETECTION_ON,
            "class_activation": "sigmoid" if d.CLASS_LOSS == "sigmoid_focal" else "softmax",
            "instance_largest_component": test.INSTANCE_LARGEST_COMPONENT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_images(self, batched_inputs: List[Dict[str, Any]]) -> ImageList:
        """Normalise and pad the images of a batch to a multiple of ``size_divisibility``."""
        images = []
        for x in batched_inputs:
            image = x["image"]
            if image.dim() != 3 or image.shape[0] != self.pixel_mean.shape[0]:
                raise ValueError(
                    f"ClusterFormer: image {x.get('file_name', '')!r} must be "
                    f"({self.pixel_mean.shape[0]}, H, W), got {tuple(image.shape)}"
                )
            images.append((image.to(self.device).float() - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict[str, Any]], return_cluster_ids: bool = False):
        if return_cluster_ids and self.training:
            raise ValueError("ClusterFormer: return_cluster_ids is an inference option (eval mode)")
        images = self.preprocess_images(batched_inputs)
        # The flag is passed only when set: predict(images) stays the whole call of training and
        # of plain inference.
        extra = {"return_cluster_ids": True} if return_cluster_ids else {}
        outputs = self.predict(images.tensor, **extra)
        if self.training:
            missing = [
                x.get("file_name", i) for i, x in enumerate(batched_inputs) if "instances" not in x
            ]
            if missing:
                raise ValueError(
                    f"ClusterFormer: training inputs need 'instances' (missing for {missing[:3]}); "
                    "check INPUT.DATASET_MAPPER_NAME"
                )
            targets = self.prepare_targets([x["instances"] for x in batched_inputs], images)
            return self.criterion.weight_losses(self.criterion(outputs, targets))
        return self.inference(outputs, batched_inputs, images)

    def prepare_targets(
        self, gt_instances: List[Instances], images: ImageList
    ) -> List[Dict[str, Tensor]]:
        """Instances -> criterion targets: ``labels``; ``masks`` zero-padded to the batch tensor's
        size (``mask_on``); ``boxes`` normalised cxcywh on the padded canvas (``box_on``)."""
        h_pad, w_pad = images.tensor.shape[-2:]
        canvas = torch.tensor([w_pad, h_pad, w_pad, h_pad], dtype=torch.float32, device=self.device)
        targets = []
        for inst in gt_instances:
            inst = inst.to(self.device)
            target = {"labels": inst.gt_classes.long()}
            for field, needed in (("gt_masks", self.mask_on), ("gt_boxes", self.box_on)):
                if needed and not inst.has(field):
                    raise ValueError(
                        f"ClusterFormer: the model predicts {field[3:]} (MODEL.CLUSTER_DECODER."
                        f"{'MASK_ON' if field == 'gt_masks' else 'BOX_ON'}) but the training "
                        f"instances have no {field!r}; check INPUT.DATASET_MAPPER_NAME"
                    )
            if self.mask_on:
                masks = inst.gt_masks
                masks = masks.tensor if hasattr(masks, "tensor") else masks
                padded = torch.zeros(
                    (masks.shape[0], h_pad, w_pad), dtype=torch.bool, device=self.device
                )
                padded[:, : masks.shape[1], : masks.shape[2]] = masks.bool()
                target["masks"] = padded
            if self.box_on:
                boxes = inst.gt_boxes
                boxes = boxes.tensor if hasattr(boxes, "tensor") else boxes
                target["boxes"] = box_xyxy_to_cxcywh(boxes.float() / canvas)
            targets.append(target)
        return targets

    def inference(
        self, outputs: Dict[str, Any], batched_inputs: List[Dict[str, Any]], images: ImageList
    ) -> List[Dict[str, Any]]:
        padded_size = images.tensor.shape[-2:]
        assignment = outputs.get("pixel_assignment")
        results = []
        for i, mask_cls in enumerate(outputs["pred_logits"]):
            image_size = images.image_sizes[i]
            height = batched_inputs[i].get("height", image_size[0])
            width = batched_inputs[i].get("width", image_size[1])
            box_pred = None
            if self.box_on:
                box_pred = boxes_to_output_size(
                    outputs["pred_boxes"][i], padded_size, image_size, (height, width)
                )
            result: Dict[str, Any] = {}
            # The predictions of "instances": instance segmentation's, else box detection's.
            instance_pred = None
            if self.mask_on:
                mask_pred = resize_mask_logits(
                    outputs["pred_masks"][i], padded_size, image_size, (height, width)
                )
                if self.semantic_on:
                    result["sem_seg"] = semantic_inference(mask_cls, mask_pred)
                if self.panoptic_on:
                    result["panoptic_seg"] = panoptic_inference(
                        mask_cls,
                        mask_pred,
                        object_mask_threshold=self.object_mask_threshold,
                        overlap_threshold=self.overlap_threshold,
                        thing_ids=self.thing_ids,
                    )
                if self.instance_on:
                    instance_pred = instance_inference(
                        mask_cls,
                        mask_pred,
                        test_topk_per_image=self.test_topk_per_image,
                        thing_ids=self.thing_ids,
                        panoptic_on=self.panoptic_on,
                        box_pred=box_pred,
                        class_activation=self.class_activation,
                        largest_component=self.instance_largest_component,
                    )
            if instance_pred is None and self.detection_on:
                instance_pred = detection_inference(
                    mask_cls,
                    box_pred,
                    test_topk_per_image=self.test_topk_per_image,
                    class_activation=self.class_activation,
                )
            if instance_pred is not None:
                result["instances"] = self._to_instances(instance_pred, (height, width))
            if assignment is not None:
                stride_h = padded_size[0] / assignment.shape[-2]
                stride_w = padded_size[1] / assignment.shape[-1]
                h = -(-image_size[0] // int(stride_h))
                w = -(-image_size[1] // int(stride_w))
                result["cluster_assignment"] = assignment[i, :, :h, :w]
            if "backbone_cluster_ids" in outputs:
                result.update(self._cluster_outputs(outputs, i, image_size))
                if assignment is not None:
                    result["cluster_assignment_stride"] = int(stride_h)
            results.append(result)
        return results

    @staticmethod
    def _cluster_outputs(outputs: Dict[str, Any], i: int, image_size) -> Dict[str, Any]:
        """Image ``i``'s ``cluster_ids`` (padding cropped), ``query_logits`` and
        ``estep_query_logits`` (see the class docstring)."""
        cluster_ids = {}
        for name, stage in outputs["backbone_cluster_ids"].items():
            h = -(-image_size[0] // stage.stride)
            w = -(-image_size[1] // stage.stride)
            cluster_ids[name] = stage._replace(ids=stage.ids[i, :, :h, :w])
        result: Dict[str, Any] = {
            "cluster_ids": cluster_ids,
            "query_logits": outputs["pred_logits"][i],
        }
        if outputs.get("aux_outputs"):
            result["estep_query_logits"] = outputs["aux_outputs"][-1]["pred_logits"][i]
        return result

    @staticmethod
    def _to_instances(pred: Dict[str, Tensor], image_size) -> Instances:
        inst = Instances(image_size)
        if "pred_masks" in pred:
            inst.pred_masks = pred["pred_masks"]
        inst.pred_boxes = Boxes(pred["pred_boxes"].float())
        inst.scores = pred["scores"]
        inst.pred_classes = pred["pred_classes"]
        return inst
