"""The ``INPUT.*`` config keys -> the augmentation recipes of :mod:`.augmentations`.

Shared by the mappers that use the same recipe: large-scale jitter (``coco_panoptic_lsj``,
``coco_instance_lsj``, ``detr_detection`` with ``INPUT.DETECTION_AUGMENTATION: lsj``) and the
semantic recipe (``mask_former_semantic``, ``mask_former_panoptic``).
"""

from __future__ import annotations

from typing import List

from detectron2.config import CfgNode
from detectron2.data import transforms as T

from .augmentations import build_lsj_augmentations, build_semantic_augmentations


def lsj_augmentations_from_config(cfg: CfgNode) -> List[T.Augmentation]:
    """Large-scale jitter to ``INPUT.IMAGE_SIZE`` squared, scale in ``[MIN_SCALE, MAX_SCALE]``."""
    return build_lsj_augmentations(
        cfg.INPUT.IMAGE_SIZE, cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE, cfg.INPUT.RANDOM_FLIP
    )


def semantic_augmentations_from_config(cfg: CfgNode, ignore_label: int) -> List[T.Augmentation]:
    """Mask2Former's semantic recipe: ``MIN_SIZE_TRAIN`` resize, ``CROP`` with the category-area
    constraint (``ignore_label`` pixels do not count), optional ``COLOR_AUG_SSD``, flip."""
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
