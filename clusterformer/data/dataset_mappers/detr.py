"""COCO-style object detection for box-level queries (``INPUT.DATASET_MAPPER_NAME: detr_detection``)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.structures import BitMasks, Boxes, Instances

from .augmentations import detection_augmentations_from_config
from .base import DatasetMapperBase, add_training_outputs, augment_and_pad, register_mapper
from .targets import (
    annotation_classes,
    pop_instance_annotations,
    transform_annotation_boxes,
    transform_annotation_masks,
)


@register_mapper("detr_detection")
class DETRDetectionDatasetMapper(DatasetMapperBase):
    """Map a COCO-instances data set dict (``annotations`` with ``bbox``, ``bbox_mode``,
    contiguous ``category_id`` and, for masks, ``segmentation``) to the model's input.

    Training: ``INPUT.DETECTION_AUGMENTATION`` ("detr": flip, then half of the time a resize to
    ``DETR_PRE_CROP_MIN_SIZES`` and a ``CROP`` random crop, then a multi-scale shortest-edge resize
    to ``MIN_SIZE_TRAIN`` capped at ``MAX_SIZE_TRAIN``; or "lsj"). Crowd annotations are dropped;
    boxes are the annotation boxes transformed and clipped to the image (the boxes COCO box AP is
    measured against); objects whose box (or, with masks, mask) became empty are dropped. Output
    keys: ``image`` ``(C, H, W)`` uint8; ``instances`` with ``gt_boxes`` (Boxes, absolute XYXY,
    float32), ``gt_classes`` (int64) and, when ``mask_on``, ``gt_masks`` (BitMasks);
    ``padding_mask`` ``(H, W)`` bool (all False unless the recipe pads, as LSJ does); plus the
    metadata keys of the input dict (``annotations`` removed).

    Testing: see :func:`~.base.map_for_inference`.
    """

    CLASS_LIST_KEY = "thing_classes"

    @configurable
    def __init__(self, is_train: bool = True, *, mask_on: bool = False, **common: Any):
        """
        Args:
            mask_on: also return ``gt_masks`` (annotations must then carry a ``segmentation``).
            common: ``augmentations`` (applied in order to the image, the boxes and, with
                ``mask_on``, the masks), ``image_format``, ``num_classes``; see
                :class:`~.base.DatasetMapperBase`.
        """
        self.mask_on = mask_on
        super().__init__(is_train, **common)

    @classmethod
    def training_arguments(cls, cfg: CfgNode) -> Dict[str, Any]:
        return {
            "augmentations": detection_augmentations_from_config(cfg),
            "mask_on": cfg.MODEL.CLUSTER_DECODER.MASK_ON,
        }

    def map_for_training(self, dataset_dict: Dict[str, Any], image: np.ndarray) -> Dict[str, Any]:
        file_name = dataset_dict["file_name"]
        annotations = pop_instance_annotations(dataset_dict, self.num_classes)
        sample = augment_and_pad(image, self.augmentations)
        image_hw = sample.image_hw

        boxes = transform_annotation_boxes(annotations, sample.transforms, image_hw, file_name)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if self.mask_on:
            masks = transform_annotation_masks(
                annotations, sample.transforms, image.shape[:2], sample.valid, file_name
            )
            mask_array = np.stack(masks) if masks else np.zeros((0, *image_hw), dtype=bool)
            keep &= mask_array.reshape(len(mask_array), -1).any(axis=1)
        classes = np.asarray(annotation_classes(annotations), dtype=np.int64).reshape(-1)

        instances = Instances(image_hw)
        instances.gt_boxes = Boxes(torch.from_numpy(boxes[keep]))
        instances.gt_classes = torch.from_numpy(classes[keep])
        if self.mask_on:
            instances.gt_masks = BitMasks(torch.from_numpy(np.ascontiguousarray(mask_array[keep])))
        return add_training_outputs(dataset_dict, sample, instances)
