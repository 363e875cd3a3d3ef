"""Panoptic segmentation, ADE20K recipe (``INPUT.DATASET_MAPPER_NAME: mask_former_panoptic``)."""

from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Optional

import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T

from .dataset_info import ignore_label_for_training, num_classes_for_training
from .inference import map_for_inference, read_checked_image
from .inference_transform import test_augmentations_from_config
from .mapper_io import panoptic_rgb_to_ids, read_panoptic_png
from .mask_former_semantic import augment_and_pad, semantic_augmentations_from_config
from .registry import register_mapper
from .targets import (
    check_segment_categories,
    instances_from_masks,
    pad_bottom_right,
    panoptic_to_masks,
    panoptic_to_semantic,
)

logger = logging.getLogger(__name__)


@register_mapper("mask_former_panoptic")
class MaskFormerPanopticDatasetMapper:
    """Map a panoptic data set dict (``file_name``, ``pan_seg_file_name``, ``segments_info`` with
    contiguous ``category_id``) to the model's input, with the semantic recipe's augmentation.

    The category-area crop constraint needs a label map: it is derived from the panoptic PNG
    (each segment's category, crowd included, void = ``ignore_label``), which equals the semantic
    PNGs the prepare scripts write, so ``sem_seg_file_name`` is not read.

    Training output keys: ``image`` ``(C, H, W)`` uint8 (padded with 0 to ``size_divisibility``);
    ``sem_seg`` ``(H, W)`` int64 (that derived label map, ``ignore_label`` on void and padding);
    ``instances`` (one mask per non-crowd segment, things and stuff, ``gt_classes``, ``gt_masks``
    BitMasks, ``gt_boxes``); ``padding_mask`` ``(H, W)`` bool; plus the metadata keys of the input
    dict (``pan_seg_file_name`` and ``sem_seg_file_name`` removed).

    Testing: see :func:`~.inference.map_for_inference`.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        ignore_label: int = 255,
        size_divisibility: int = -1,
        num_classes: Optional[int] = None,
    ):
        """
        Args:
            augmentations: applied in order to the image, the label map and the panoptic PNG.
            image_format: channel order of the returned image ("BGR", "RGB").
            ignore_label: label value of void pixels (and of padding) in ``sem_seg``.
            size_divisibility: pad training images to a multiple of this (<= 0: no padding).
            num_classes: segments need ``0 <= category_id < num_classes`` (None: unchecked).
        """
        self.is_train = is_train
        self.augmentations = augmentations
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
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
        ignore_label = ignore_label_for_training(cfg)
        return {
            "is_train": True,
            "augmentations": semantic_augmentations_from_config(cfg, ignore_label),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "num_classes": num_classes_for_training(cfg, "stuff_classes"),
        }

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        if not self.is_train:
            return map_for_inference(dataset_dict, self.image_format, self.augmentations)

        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_checked_image(dataset_dict, self.image_format)
        dataset_dict.pop("sem_seg_file_name", None)
        panoptic_file = dataset_dict.pop("pan_seg_file_name", None)
        if panoptic_file is None or "segments_info" not in dataset_dict:
            raise KeyError(
                f"Data set dict of {dataset_dict['file_name']!r} has no 'pan_seg_file_name' / "
                "'segments_info'; mask_former_panoptic needs a panoptic data set"
            )
        segments_info = dataset_dict["segments_info"]
        panoptic_rgb = read_panoptic_png(panoptic_file, image.shape[:2], dataset_dict["file_name"])
        if self.num_classes is not None:
            check_segment_categories(segments_info, self.num_classes, panoptic_file)
        labels = panoptic_to_semantic(
            panoptic_rgb_to_ids(panoptic_rgb), segments_info, self.ignore_label
        )

        image_tensor, sem_seg, padding_mask, transforms, pad_hw = augment_and_pad(
            image, labels, self.augmentations, self.size_divisibility, self.ignore_label
        )
        segment_ids = torch.from_numpy(
            panoptic_rgb_to_ids(transforms.apply_segmentation(panoptic_rgb))
        )
        segment_ids = pad_bottom_right(segment_ids, pad_hw, -1)
        segment_ids[padding_mask] = -1

        masks, classes = panoptic_to_masks(segment_ids.numpy(), segments_info)
        dataset_dict["image"] = image_tensor
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["padding_mask"] = padding_mask
        dataset_dict["instances"] = instances_from_masks(masks, classes, tuple(sem_seg.shape))
        return dataset_dict
