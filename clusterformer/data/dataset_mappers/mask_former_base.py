"""What ``mask_former_semantic`` and ``mask_former_panoptic`` share: Mask2Former's ADE20K recipe.

Both train with the semantic recipe (shortest-edge resize, crop with the category-area constraint,
optional SSD colour jitter, flip), which needs a ``(H, W)`` label map to augment with the image,
and both pad image and labels to ``size_divisibility`` and return that label map as ``sem_seg``.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
from detectron2.config import CfgNode, configurable

from .augmentations_from_config import semantic_augmentations_from_config
from .augmented_sample import AugmentedSample, augment_and_pad
from .dataset_info import ignore_label_for_training, num_classes_for_training
from .mapper_base import DatasetMapperBase


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
                ``[0, num_classes)``); see :class:`~.mapper_base.DatasetMapperBase`.
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
            "num_classes": num_classes_for_training(cfg, cls.CLASS_LIST_KEY),
        }

    def augment_with_labels(self, image: np.ndarray, labels: np.ndarray) -> AugmentedSample:
        """Augment the ``(H, W, C)`` image with its ``(H, W)`` label map, then pad both."""
        return augment_and_pad(
            image, self.augmentations, labels, self.ignore_label, self.size_divisibility
        )
