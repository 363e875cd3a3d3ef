"""COCO panoptic segmentation with large-scale jitter (``INPUT.DATASET_MAPPER_NAME: coco_panoptic_lsj``)."""

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
from .mapper_io import panoptic_rgb_to_ids, read_panoptic_png
from .registry import register_mapper
from .targets import check_segment_categories, instances_from_masks, panoptic_to_masks

logger = logging.getLogger(__name__)


@register_mapper("coco_panoptic_lsj")
class COCOPanopticLSJDatasetMapper:
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
            augmentations: applied in order to the image and the panoptic PNG.
            image_format: channel order of the returned image ("BGR", "RGB").
            num_classes: segments must have ``0 <= category_id < num_classes`` (None: unchecked).
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
                "'segments_info'; coco_panoptic_lsj needs a panoptic data set"
            )
        segments_info = dataset_dict["segments_info"]
        panoptic_rgb = read_panoptic_png(panoptic_file, image.shape[:2], dataset_dict["file_name"])
        if self.num_classes is not None:
            check_segment_categories(segments_info, self.num_classes, panoptic_file)

        aug_input = T.AugInput(image)
        transforms = T.AugmentationList(self.augmentations)(aug_input)
        image = aug_input.image
        valid = valid_pixels_after(transforms, panoptic_rgb.shape[:2])
        segment_ids = panoptic_rgb_to_ids(transforms.apply_segmentation(panoptic_rgb))
        # The pad colour (255, 255, 255) could be a real segment id: clear padding explicitly.
        segment_ids[~valid] = -1

        masks, classes = panoptic_to_masks(segment_ids, segments_info)
        dataset_dict["image"] = image_to_chw_tensor(image)
        dataset_dict["padding_mask"] = torch.from_numpy(np.ascontiguousarray(~valid))
        dataset_dict["instances"] = instances_from_masks(masks, classes, image.shape[:2])
        return dataset_dict
