"""Semantic segmentation, ADE20K recipe (``INPUT.DATASET_MAPPER_NAME: mask_former_semantic``)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from .augmented_sample import add_training_outputs
from .mapper_io import read_semantic_png
from .mask_former_base import MaskFormerRecipeMapperBase
from .registry import register_mapper
from .targets import check_semantic_labels, instances_from_masks, semantic_to_masks


@register_mapper("mask_former_semantic")
class MaskFormerSemanticDatasetMapper(MaskFormerRecipeMapperBase):
    """Map a semantic data set dict (``file_name``, ``sem_seg_file_name``, as ``load_sem_seg``
    gives) to the model's input.

    Training: shortest-edge resize (``MIN_SIZE_TRAIN``), random crop ``CROP.SIZE`` with the
    single-category area constraint, optional SSD colour jitter, flip (see
    :func:`~.augmentations_from_config.semantic_augmentations_from_config`); then bottom/right
    padding to a multiple of ``size_divisibility`` (image 0, labels ``ignore_label``). Output keys:
    ``image`` ``(C, H, W)`` uint8; ``sem_seg`` ``(H, W)`` int64 with ``ignore_label`` on void and
    padding; ``instances`` (one mask per class present, ``gt_classes`` = that class,
    ``gt_masks`` BitMasks, ``gt_boxes``); ``padding_mask`` ``(H, W)`` bool; plus the metadata
    keys of the input dict (``sem_seg_file_name`` removed).

    Testing: see :func:`~.inference.map_for_inference` (no padding: the model pads batches).
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
