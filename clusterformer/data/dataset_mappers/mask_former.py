"""Semantic and panoptic segmentation with Mask2Former's ADE20K recipe (``INPUT.DATASET_MAPPER_NAME``
``mask_former_semantic`` / ``mask_former_panoptic``).

Both train with the semantic recipe (shortest-edge resize, crop with the category-area constraint,
optional SSD colour jitter, flip), which needs a ``(H, W)`` label map to augment with the image,
and both pad image and labels to ``size_divisibility`` and return that label map as ``sem_seg``.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
from detectron2.config import CfgNode, configurable
from panopticapi.utils import rgb2id

from .augmentations import semantic_augmentations_from_config
from .base import (
    AugmentedSample,
    DatasetMapperBase,
    add_training_outputs,
    augment_and_pad,
    ignore_label_for_training,
    register_mapper,
)
from .targets import (
    check_semantic_labels,
    instances_from_masks,
    panoptic_instances,
    panoptic_to_semantic,
    pop_panoptic_annotation,
    read_semantic_png,
    semantic_to_masks,
)


class MaskFormerRecipeMapperBase(DatasetMapperBase):
    """A mapper trained with the semantic recipe; subclasses read the label map and build targets."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        ignore_label: int = 255,
        size_divisibility: int = -1,
        **common: Any,
    ):
        """
        Args:
            ignore_label: label value of void pixels (and of padding) in ``sem_seg``.
            size_divisibility: pad training images to a multiple of this (<= 0: no padding).
            common: ``augmentations`` (applied in order to the image and its label map),
                ``image_format``, ``num_classes`` (labels / segments need a class id in
                ``[0, num_classes)``); see :class:`~.base.DatasetMapperBase`.
        """
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        super().__init__(is_train, **common)

    @classmethod
    def training_arguments(cls, cfg: CfgNode) -> Dict[str, Any]:
        ignore_label = ignore_label_for_training(cfg)
        return {
            "augmentations": semantic_augmentations_from_config(cfg, ignore_label),
            "ignore_label": ignore_label,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def augment_with_labels(self, image: np.ndarray, labels: np.ndarray) -> AugmentedSample:
        """Augment the ``(H, W, C)`` image with its ``(H, W)`` label map, then pad both."""
        return augment_and_pad(
            image, self.augmentations, labels, self.ignore_label, self.size_divisibility
        )


@register_mapper("mask_former_semantic")
class MaskFormerSemanticDatasetMapper(MaskFormerRecipeMapperBase):
    """Map a semantic data set dict (``file_name``, ``sem_seg_file_name``, as ``load_sem_seg``
    gives) to the model's input.

    Training: shortest-edge resize (``MIN_SIZE_TRAIN``), random crop ``CROP.SIZE`` with the
    single-category area constraint, optional SSD colour jitter, flip (see
    :func:`~.augmentations.semantic_augmentations_from_config`); then bottom/right padding to a
    multiple of ``size_divisibility`` (image 0, labels ``ignore_label``). Output keys: ``image``
    ``(C, H, W)`` uint8; ``sem_seg`` ``(H, W)`` int64 with ``ignore_label`` on void and padding;
    ``instances`` (one mask per class present, ``gt_classes`` = that class, ``gt_masks``
    BitMasks, ``gt_boxes``); ``padding_mask`` ``(H, W)`` bool; plus the metadata keys of the input
    dict (``sem_seg_file_name`` removed).

    Testing: see :func:`~.base.map_for_inference` (no padding: the model pads batches).
    """

    def map_for_training(self, dataset_dict: Dict[str, Any], image: np.ndarray) -> Dict[str, Any]:
        label_file = dataset_dict.pop("sem_seg_file_name", None)
        if label_file is None:
            raise KeyError(
                f"Data set dict of {dataset_dict['file_name']!r} has no 'sem_seg_file_name'; "
                "mask_former_semantic needs a semantic segmentation data set"
            )
        labels = read_semantic_png(label_file, image.shape[:2], dataset_dict["file_name"])
        if self.num_classes is not None:
            check_semantic_labels(labels, self.num_classes, self.ignore_label, label_file)

        sample = self.augment_with_labels(image, labels)
        masks, classes = semantic_to_masks(sample.sem_seg.numpy(), self.ignore_label)
        instances = instances_from_masks(masks, classes, sample.image_hw)
        return add_training_outputs(dataset_dict, sample, instances)


@register_mapper("mask_former_panoptic")
class MaskFormerPanopticDatasetMapper(MaskFormerRecipeMapperBase):
    """Map a panoptic data set dict (``file_name``, ``pan_seg_file_name``, ``segments_info`` with
    contiguous ``category_id``) to the model's input, with the semantic recipe's augmentation
    (see :class:`MaskFormerSemanticDatasetMapper`).

    The category-area crop constraint needs a label map: it is derived from the panoptic PNG
    (each segment's category, crowd included, void = ``ignore_label``), which equals the semantic
    PNGs the prepare scripts write, so ``sem_seg_file_name`` is not read.

    Training output keys: ``image`` ``(C, H, W)`` uint8 (padded with 0 to ``size_divisibility``);
    ``sem_seg`` ``(H, W)`` int64 (that derived label map, ``ignore_label`` on void and padding);
    ``instances`` (one mask per non-crowd segment, things and stuff, ``gt_classes``, ``gt_masks``
    BitMasks, ``gt_boxes``); ``padding_mask`` ``(H, W)`` bool; plus the metadata keys of the input
    dict (``pan_seg_file_name`` and ``sem_seg_file_name`` removed).

    Testing: see :func:`~.base.map_for_inference`.
    """

    def map_for_training(self, dataset_dict: Dict[str, Any], image: np.ndarray) -> Dict[str, Any]:
        panoptic_rgb, segments_info = pop_panoptic_annotation(
            dataset_dict, image.shape[:2], self.num_classes, "mask_former_panoptic"
        )
        labels = panoptic_to_semantic(rgb2id(panoptic_rgb), segments_info, self.ignore_label)
        sample = self.augment_with_labels(image, labels)
        instances = panoptic_instances(panoptic_rgb, segments_info, sample)
        return add_training_outputs(dataset_dict, sample, instances)
