"""Data set registration (DatasetCatalog / MetadataCatalog)."""

from .register_ade20k_panoptic import register_ade20k_panoptic  # noqa: F401  (ade20k_panoptic_*)
from .register_ade20k_semantic import register_ade20k_semantic  # noqa: F401  (ade20k_sem_seg_*)
from .register_coco_panoptic_semseg import register_coco_panoptic_with_sem_seg  # noqa: F401
