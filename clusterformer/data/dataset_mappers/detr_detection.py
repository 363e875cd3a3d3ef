"""COCO-style object detection for box-level queries (``INPUT.DATASET_MAPPER_NAME: detr_detection``)."""

from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances

from .augmentations import (
    build_detr_augmentations,
    build_lsj_augmentations,
    valid_pixels_after,
)
from .dataset_info import num_classes_for_training
from .inference import image_to_chw_tensor, map_for_inference, read_checked_image
from .inference_transform import test_augmentations_from_config
from .instance_annotations import (
    annotation_classes,
    check_annotation_categories,
    non_crowd_annotations,
    transform_annotation_boxes,
    transform_annotation_masks,
)
from .registry import register_mapper

logger = logging.getLogger(__name__)

DETECTION_AUGMENTATIONS = ("detr", "lsj")


def detection_augmentations_from_config(cfg: CfgNode) -> List[T.Augmentation]:
    """``INPUT.DETECTION_AUGMENTATION``: "detr" (multi-scale, DINO's COCO recipe) or "lsj"."""
    recipe = cfg.INPUT.DETECTION_AUGMENTATION
    if recipe == "detr":
        return build_detr_augmentations(
            min_size_train=cfg.INPUT.MIN_SIZE_TRAIN,
            max_size_train=cfg.INPUT.MAX_SIZE_TRAIN,
            crop_enabled=cfg.INPUT.CROP.ENABLED,
            crop_type=cfg.INPUT.CROP.TYPE,
            crop_size=cfg.INPUT.CROP.SIZE,
            pre_crop_min_sizes=cfg.INPUT.DETR_PRE_CROP_MIN_SIZES,
            crop_probability=cfg.INPUT.DETR_CROP_PROBABILITY,
            random_flip=cfg.INPUT.RANDOM_FLIP,
        )
    if recipe == "lsj":
        return build_lsj_augmentations(
            cfg.INPUT.IMAGE_SIZE, cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE, cfg.INPUT.RANDOM_FLIP
        )
    raise ValueError(
        f"INPUT.DETECTION_AUGMENTATION={recipe!r}; expected one of {DETECTION_AUGMENTATIONS}"
    )


@register_mapper("detr_detection")
class DETRDetectionDatasetMapper:
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

    Testing: see :func:`~.inference.map_for_inference`.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        mask_on: bool = False,
        num_classes: Optional[int] = None,
    ):
        """
        Args:
            augmentations: applied in order to the image, the boxes and (``mask_on``) the masks.
            image_format: channel order of the returned image ("BGR", "RGB").
            mask_on: also return ``gt_masks`` (annotations must then carry a ``segmentation``).
            num_classes: annotations need ``0 <= category_id < num_classes`` (None: unchecked).
        """
        self.is_train = is_train
        self.augmentations = augmentations
        self.image_format = image_format
        self.mask_on = mask_on
        self.num_classes = num_classes
        mode = "training" if is_train else "inference"
        logger.info(f"[{type(self).__name__}] augmentations for {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict[str, Any]:
        if not is_train:
            return {
                "is_train": False,
                "augmentations": test_augmentations_from_config(cfg),
                "image_format": cfg.INPUT.FORMAT,
            }
        return {
            "is_train": True,
            "augmentations": detection_augmentations_from_config(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "mask_on": cfg.MODEL.CLUSTER_DECODER.MASK_ON,
            "num_classes": num_classes_for_training(cfg, "thing_classes"),
        }

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        if not self.is_train:
            return map_for_inference(dataset_dict, self.image_format, self.augmentations)

        dataset_dict = copy.deepcopy(dataset_dict)
        file_name = dataset_dict["file_name"]
        image = read_checked_image(dataset_dict, self.image_format)
        annotations = non_crowd_annotations(dataset_dict.pop("annotations", []))
        if self.num_classes is not None:
            check_annotation_categories(annotations, self.num_classes, file_name)

        original_hw = image.shape[:2]
        aug_input = T.AugInput(image)
        transforms = T.AugmentationList(self.augmentations)(aug_input)
        image = aug_input.image
        image_hw = image.shape[:2]
        valid = valid_pixels_after(transforms, original_hw)

        boxes = transform_annotation_boxes(annotations, transforms, image_hw, file_name)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if self.mask_on:
            masks = transform_annotation_masks(
                annotations, transforms, original_hw, valid, file_name
            )
            mask_array = np.stack(masks) if masks else np.zeros((0, *image_hw), dtype=bool)
            keep &= mask_array.reshape(len(mask_array), -1).any(axis=1)
        classes = np.asarray(annotation_classes(annotations), dtype=np.int64).reshape(-1)

        instances = Instances(image_hw)
        instances.gt_boxes = Boxes(torch.from_numpy(boxes[keep]))
        instances.gt_classes = torch.from_numpy(classes[keep])
        if self.mask_on:
            instances.gt_masks = BitMasks(torch.from_numpy(np.ascontiguousarray(mask_array[keep])))

        dataset_dict["image"] = image_to_chw_tensor(image)
        dataset_dict["padding_mask"] = torch.from_numpy(np.ascontiguousarray(~valid))
        dataset_dict["instances"] = instances
        return dataset_dict
