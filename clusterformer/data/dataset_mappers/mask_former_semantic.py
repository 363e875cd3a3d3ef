"""Semantic segmentation, ADE20K recipe (``INPUT.DATASET_MAPPER_NAME: mask_former_semantic``)."""

from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T

from .augmentations import (
    build_semantic_augmentations,
    valid_pixels_after,
)
from .dataset_info import ignore_label_for_training, num_classes_for_training
from .inference import image_to_chw_tensor, map_for_inference, read_checked_image
from .inference_transform import test_augmentations_from_config
from .mapper_io import read_semantic_png
from .registry import register_mapper
from .targets import (
    check_semantic_labels,
    instances_from_masks,
    pad_bottom_right,
    pad_to_divisibility,
    semantic_to_masks,
)

logger = logging.getLogger(__name__)


def semantic_augmentations_from_config(cfg: CfgNode, ignore_label: int) -> List[T.Augmentation]:
    """The training augmentations of ``mask_former_semantic`` / ``mask_former_panoptic``."""
    return build_semantic_augmentations(
        min_size_train=cfg.INPUT.MIN_SIZE_TRAIN,
        max_size_train=cfg.INPUT.MAX_SIZE_TRAIN,
        min_size_train_sampling=cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
        crop_enabled=cfg.INPUT.CROP.ENABLED,
        crop_type=cfg.INPUT.CROP.TYPE,
        crop_size=cfg.INPUT.CROP.SIZE,
        single_category_max_area=cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
        ignore_label=ignore_label,
        color_aug_ssd=cfg.INPUT.COLOR_AUG_SSD,
        image_format=cfg.INPUT.FORMAT,
        random_flip=cfg.INPUT.RANDOM_FLIP,
    )


def augment_and_pad(
    image: np.ndarray,
    labels: np.ndarray,
    augmentations: List[T.Augmentation],
    size_divisibility: int,
    ignore_label: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, T.TransformList, Tuple[int, int]]:
    """Augment an image with its ``(H, W)`` label map, then pad both at the bottom/right to a
    multiple of ``size_divisibility`` (image with 0, labels with ``ignore_label``).

    Returns:
        image ``(C, H', W')`` uint8, labels ``(H', W')`` int64, padding mask ``(H', W')`` bool
        (True = not from the input image), the transforms applied, and the padding ``(ph, pw)``.
    """
    original_hw = image.shape[:2]
    aug_input = T.AugInput(image, sem_seg=labels)
    transforms = T.AugmentationList(augmentations)(aug_input)
    valid = valid_pixels_after(transforms, original_hw)
    sem_seg = aug_input.sem_seg.astype(np.int64)
    sem_seg[~valid] = ignore_label

    image_tensor = image_to_chw_tensor(aug_input.image)
    pad_hw = pad_to_divisibility(size_divisibility, image_tensor.shape[-2:])
    image_tensor = pad_bottom_right(image_tensor, pad_hw, 0)
    sem_seg_tensor = pad_bottom_right(torch.from_numpy(sem_seg), pad_hw, ignore_label)
    padding_mask = pad_bottom_right(torch.from_numpy(np.ascontiguousarray(~valid)), pad_hw, True)
    return image_tensor, sem_seg_tensor, padding_mask, transforms, pad_hw


@register_mapper("mask_former_semantic")
class MaskFormerSemanticDatasetMapper:
    """Map a semantic data set dict (``file_name``, ``sem_seg_file_name``, as ``load_sem_seg``
    gives) to the model's input.

    Training: shortest-edge resize (``MIN_SIZE_TRAIN``), random crop ``CROP.SIZE`` with the
    single-category area constraint, optional SSD colour jitter, flip; then bottom/right padding
    to a multiple of ``size_divisibility`` (image 0, labels ``ignore_label``). Output keys:
    ``image`` ``(C, H, W)`` uint8; ``sem_seg`` ``(H, W)`` int64 with ``ignore_label`` on void and
    padding; ``instances`` (one mask per class present, ``gt_classes`` = that class,
    ``gt_masks`` BitMasks, ``gt_boxes``); ``padding_mask`` ``(H, W)`` bool; plus the metadata
    keys of the input dict (``sem_seg_file_name`` removed).

    Testing: see :func:`~.inference.map_for_inference` (no padding: the model pads batches).
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
            augmentations: applied in order to the image and the label map.
            image_format: channel order of the returned image ("BGR", "RGB").
            ignore_label: label value of void pixels (and of padding).
            size_divisibility: pad training images to a multiple of this (<= 0: no padding).
            num_classes: labels must be in ``[0, num_classes)`` or ``ignore_label``
                (None: unchecked).
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
        label_file = dataset_dict.pop("sem_seg_file_name", None)
        if label_file is None:
            raise KeyError(
                f"Data set dict of {dataset_dict['file_name']!r} has no 'sem_seg_file_name'; "
                "mask_former_semantic needs a semantic segmentation data set"
            )
        labels = read_semantic_png(label_file, image.shape[:2], dataset_dict["file_name"])
        if self.num_classes is not None:
            check_semantic_labels(labels, self.num_classes, self.ignore_label, label_file)

        image_tensor, sem_seg, padding_mask, _, _ = augment_and_pad(
            image, labels, self.augmentations, self.size_divisibility, self.ignore_label
        )
        masks, classes = semantic_to_masks(sem_seg.numpy(), self.ignore_label)
        dataset_dict["image"] = image_tensor
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["padding_mask"] = padding_mask
        dataset_dict["instances"] = instances_from_masks(masks, classes, tuple(sem_seg.shape))
        return dataset_dict
