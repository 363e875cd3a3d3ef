"""Dataset mappers, selected by ``INPUT.DATASET_MAPPER_NAME`` (see :func:`build_dataset_mapper`)."""

from . import classification_mapper  # noqa: F401  (registers "classification")
from .coco_instance_lsj import COCOInstanceLSJDatasetMapper  # registers "coco_instance_lsj"
from .coco_panoptic_lsj import COCOPanopticLSJDatasetMapper  # registers "coco_panoptic_lsj"
from .detr_detection import DETRDetectionDatasetMapper  # registers "detr_detection"
from .inference_transform import InputGeometry, build_test_transform
from .mask_former_panoptic import MaskFormerPanopticDatasetMapper  # "mask_former_panoptic"
from .mask_former_semantic import MaskFormerSemanticDatasetMapper  # "mask_former_semantic"
from .registry import DATASET_MAPPER_REGISTRY, build_dataset_mapper, register_mapper

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "COCOInstanceLSJDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "DETRDetectionDatasetMapper",
    "InputGeometry",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "build_dataset_mapper",
    "build_test_transform",
    "register_mapper",
]
