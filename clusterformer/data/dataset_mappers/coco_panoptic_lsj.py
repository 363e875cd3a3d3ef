"""COCO panoptic segmentation with large-scale jitter (``INPUT.DATASET_MAPPER_NAME: coco_panoptic_lsj``)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
from detectron2.config import CfgNode

from .augmentations_from_config import lsj_augmentations_from_config
from .augmented_sample import add_training_outputs, augment_and_pad
from .dataset_info import num_classes_for_training
from .mapper_base import DatasetMapperBase
from .panoptic_annotations import panoptic_instances, pop_panoptic_annotation
from .registry import register_mapper


@register_mapper("coco_panoptic_lsj")
class COCOPanopticLSJDatasetMapper(DatasetMapperBase):
    """Map a COCO-panoptic data set dict (``file_name``, ``pan_seg_file_name``, ``segments_info``
    with contiguous ``category_id``) to the model's input.

    Training (``is_train=True``): large-scale jitter (flip, ``ResizeScale`` of ``image_size`` by
    U(``min_scale``, ``max_scale``), ``FixedSizeCrop`` to ``image_size`` squared) applied to the
    image and the panoptic PNG alike. Output keys: ``image`` ``(C, S, S)`` uint8 in
    ``image_format``; ``instances`` (``gt_classes``, ``gt_masks`` BitMasks, ``gt_boxes``; one
    mask per non-crowd segment, things and stuff, no padding pixel in any mask);
    ``padding_mask`` ``(S, S)`` bool, True where FixedSizeCrop padded (image value 128 there);
    plus ``file_name``, ``image_id``, ``height``, ``width`` (original size) and the other keys of
    the input dict except ``pan_seg_file_name`` and ``sem_seg_file_name``.

    Testing: see :func:`~.inference.map_for_inference` (shortest-edge resize, image only).
    """

    @classmethod
    def training_arguments(cls, cfg: CfgNode) -> Dict[str, Any]:
        return {
            "augmentations": lsj_augmentations_from_config(cfg),
            "num_classes": num_classes_for_training(cfg, cls.CLASS_LIST_KEY),
        }

    def map_for_training(self, dataset_dict: Dict[str, Any], image: np.ndarray) -> Dict[str, Any]:
        panoptic_rgb, segments_info = pop_panoptic_annotation(
            dataset_dict, image.shape[:2], self.num_classes, "coco_panoptic_lsj"
        )
        sample = augment_and_pad(image, self.augmentations)
        instances = panoptic_instances(panoptic_rgb, segments_info, sample)
        return add_training_outputs(dataset_dict, sample, instances)
