"""COCO instance segmentation with large-scale jitter (``INPUT.DATASET_MAPPER_NAME: coco_instance_lsj``)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
from detectron2.config import CfgNode

from .augmentations_from_config import lsj_augmentations_from_config
from .augmented_sample import add_training_outputs, augment_and_pad
from .dataset_info import num_classes_for_training
from .instance_annotations import (
    annotation_classes,
    pop_instance_annotations,
    transform_annotation_masks,
)
from .mapper_base import DatasetMapperBase
from .registry import register_mapper
from .targets import instances_from_masks


@register_mapper("coco_instance_lsj")
class COCOInstanceLSJDatasetMapper(DatasetMapperBase):
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

    CLASS_LIST_KEY = "thing_classes"

    @classmethod
    def training_arguments(cls, cfg: CfgNode) -> Dict[str, Any]:
        return {
            "augmentations": lsj_augmentations_from_config(cfg),
            "num_classes": num_classes_for_training(cfg, cls.CLASS_LIST_KEY),
        }

    def map_for_training(self, dataset_dict: Dict[str, Any], image: np.ndarray) -> Dict[str, Any]:
        file_name = dataset_dict["file_name"]
        annotations = pop_instance_annotations(dataset_dict, self.num_classes)
        sample = augment_and_pad(image, self.augmentations)
        masks = transform_annotation_masks(
            annotations, sample.transforms, image.shape[:2], sample.valid, file_name
        )
        instances = instances_from_masks(masks, annotation_classes(annotations), sample.image_hw)
        return add_training_outputs(dataset_dict, sample, instances)
