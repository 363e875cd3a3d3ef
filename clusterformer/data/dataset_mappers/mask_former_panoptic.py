"""Panoptic segmentation, ADE20K recipe (``INPUT.DATASET_MAPPER_NAME: mask_former_panoptic``)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from .augmented_sample import add_training_outputs
from .mapper_io import panoptic_rgb_to_ids
from .mask_former_base import MaskFormerRecipeMapperBase
from .panoptic_annotations import panoptic_instances, panoptic_to_semantic, pop_panoptic_annotation
from .registry import register_mapper


@register_mapper("mask_former_panoptic")
class MaskFormerPanopticDatasetMapper(MaskFormerRecipeMapperBase):
    """Map a panoptic data set dict (``file_name``, ``pan_seg_file_name``, ``segments_info`` with
    contiguous ``category_id``) to the model's input, with the semantic recipe's augmentation
    (see :class:`~.mask_former_semantic.MaskFormerSemanticDatasetMapper`).

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

    def map_for_training(self, dataset_dict: Dict[str, Any], image: np.ndarray) -> Dict[str, Any]:
        panoptic_rgb, segments_info = pop_panoptic_annotation(
            dataset_dict, image.shape[:2], self.num_classes, "mask_former_panoptic"
        )
        labels = panoptic_to_semantic(
            panoptic_rgb_to_ids(panoptic_rgb), segments_info, self.ignore_label
        )
        sample = self.augment_with_labels(image, labels)
        instances = panoptic_instances(panoptic_rgb, segments_info, sample)
        return add_training_outputs(dataset_dict, sample, instances)
