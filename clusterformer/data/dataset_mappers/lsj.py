"""COCO panoptic and instance segmentation with large-scale jitter (``INPUT.DATASET_MAPPER_NAME``
``coco_panoptic_lsj`` / ``coco_instance_lsj``), the COCO recipes of Mask2Former."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
from detectron2.config import CfgNode

from .augmentations import lsj_augmentations_from_config
from .base import DatasetMapperBase, add_training_outputs, augment_and_pad, register_mapper
from .targets import (
    annotation_classes,
    instances_from_masks,
    panoptic_instances,
    pop_instance_annotations,
    pop_panoptic_annotation,
    transform_annotation_masks,
)


class LSJDatasetMapperBase(DatasetMapperBase):
    """Training with large-scale jitter to ``INPUT.IMAGE_SIZE`` squared (see
    :func:`~.augmentations.build_lsj_augmentations`); testing with :func:`~.base.map_for_inference`."""

    @classmethod
    def training_arguments(cls, cfg: CfgNode) -> Dict[str, Any]:
        return {"augmentations": lsj_augmentations_from_config(cfg)}


@register_mapper("coco_panoptic_lsj")
class COCOPanopticLSJDatasetMapper(LSJDatasetMapperBase):
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

    Testing: see :func:`~.base.map_for_inference` (shortest-edge resize, image only).
    """

    def map_for_training(self, dataset_dict: Dict[str, Any], image: np.ndarray) -> Dict[str, Any]:
        panoptic_rgb, segments_info = pop_panoptic_annotation(
            dataset_dict, image.shape[:2], self.num_classes, "coco_panoptic_lsj"
        )
        sample = augment_and_pad(image, self.augmentations)
        instances = panoptic_instances(panoptic_rgb, segments_info, sample)
        return add_training_outputs(dataset_dict, sample, instances)


@register_mapper("coco_instance_lsj")
class COCOInstanceLSJDatasetMapper(LSJDatasetMapperBase):
    """Map a COCO-instances data set dict (``file_name``, ``annotations`` with contiguous
    ``category_id`` and polygon / RLE ``segmentation``, as ``load_coco_json`` gives) to the
    model's input.

    Training: large-scale jitter. Crowd annotations are dropped; each other annotation's mask is
    decoded, transformed with the image, and dropped if it became empty. Output keys: ``image``
    ``(C, S, S)`` uint8; ``instances`` (``gt_classes``, ``gt_masks`` BitMasks, ``gt_boxes`` =
    tight boxes of the transformed masks, which stay tight after a crop where a cropped annotation
    box would not); ``padding_mask`` ``(S, S)`` bool (True = padding); plus the metadata keys of
    the input dict (``annotations`` removed).

    Testing: see :func:`~.base.map_for_inference`.
    """

    CLASS_LIST_KEY = "thing_classes"

    def map_for_training(self, dataset_dict: Dict[str, Any], image: np.ndarray) -> Dict[str, Any]:
        file_name = dataset_dict["file_name"]
        annotations = pop_instance_annotations(dataset_dict, self.num_classes)
        sample = augment_and_pad(image, self.augmentations)
        masks = transform_annotation_masks(
            annotations, sample.transforms, image.shape[:2], sample.valid, file_name
        )
        instances = instances_from_masks(masks, annotation_classes(annotations), sample.image_hw)
        return add_training_outputs(dataset_dict, sample, instances)
