"""COCO instance segmentation with large-scale jitter (``INPUT.DATASET_MAPPER_NAME: coco_instance_lsj``)."""

from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T

from .augmentations import build_lsj_augmentations, valid_pixels_after
from .dataset_info import num_classes_for_training
from .inference import image_to_chw_tensor, map_for_inference, read_checked_image
from .inference_transform import test_augmentations_from_config
from .instance_annotations import (
    annotation_classes,
    check_annotation_categories,
    non_crowd_annotations,
    transform_annotation_masks,
)
from .registry import register_mapper
from .targets import instances_from_masks

logger = logging.getLogger(__name__)


@register_mapper("coco_instance_lsj")
class COCOInstanceLSJDatasetMapper:
    """Map a COCO-instances data set dict (``file_name``, ``annotations`` with contiguous
    ``category_id`` and polygon / RLE ``segmentation``, as ``load_coco_json`` gives) to the
    model's input.

    Training: large-scale jitter (see :func:`~.augmentations.build_lsj_augmentations`). Crowd
    annotations are dropped; each other annotation's mask is decoded, transformed with the image,
    and dropped if it became empty. Output keys: ``image`` ``(C, S, S)`` uint8; ``instances``
    (``gt_classes``, ``gt_masks`` BitMasks, ``gt_boxes`` = tight boxes of the transformed masks,
    which stay tight after a crop where a cropped annotation box would not); ``padding_mask``
    ``(S, S)`` bool (True = padding); plus the metadata keys of the input dict (``annotations``
    removed).

    Testing: see :func:`~.inference.map_for_inference`.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        num_classes: Optional[int] = None,
    ):
        """
        Args:
            augmentations: applied in order to the image and the instance masks.
            image_format: channel order of the returned image ("BGR", "RGB").
            num_classes: annotations need ``0 <= category_id < num_classes`` (None: unchecked).
        """
        self.is_train = is_train
        self.augmentations = augmentations
        self.image_format = image_format
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
            "augmentations": build_lsj_augmentations(
                cfg.INPUT.IMAGE_SIZE,
                cfg.INPUT.MIN_SCALE,
                cfg.INPUT.MAX_SCALE,
                cfg.INPUT.RANDOM_FLIP,
            ),
            "image_format": cfg.INPUT.FORMAT,
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
        valid = valid_pixels_after(transforms, original_hw)
        masks = transform_annotation_masks(annotations, transforms, original_hw, valid, file_name)

        dataset_dict["image"] = image_to_chw_tensor(image)
        dataset_dict["padding_mask"] = torch.from_numpy(np.ascontiguousarray(~valid))
        dataset_dict["instances"] = instances_from_masks(
            masks, annotation_classes(annotations), image.shape[:2]
        )
        return dataset_dict
