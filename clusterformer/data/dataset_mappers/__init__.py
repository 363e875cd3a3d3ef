"""Dataset mappers, selected by ``INPUT.DATASET_MAPPER_NAME`` (see :func:`build_dataset_mapper`).

``base`` (registry, base class, augment-and-pad, test-time mapping), ``augmentations`` (every
recipe), ``targets`` (annotations -> targets), and one file per mapper family: ``lsj``,
``mask_former``, ``detr``, ``classification``.
"""

from .base import (
    DATASET_MAPPER_REGISTRY,
    InputGeometry,
    build_dataset_mapper,
    build_test_transform,
    class_list_key,
    image_to_chw_tensor,
    register_mapper,
)
from .classification import ClassificationDatasetMapper  # registers "classification"
from .detr import DETRDetectionDatasetMapper  # registers "detr_detection"
from .lsj import COCOInstanceLSJDatasetMapper, COCOPanopticLSJDatasetMapper  # "coco_*_lsj"
from .mask_former import MaskFormerPanopticDatasetMapper, MaskFormerSemanticDatasetMapper

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "COCOInstanceLSJDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "ClassificationDatasetMapper",
    "DETRDetectionDatasetMapper",
    "InputGeometry",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "build_dataset_mapper",
    "build_test_transform",
    "class_list_key",
    "image_to_chw_tensor",
    "register_mapper",
]
