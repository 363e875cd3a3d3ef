"""Data set registration (DatasetCatalog / MetadataCatalog) and the data set generators.

The generators and format helpers (``shapes``, ``mask_encoding``, ``class_folder``'s loader)
import without detectron2; the registration modules need it and are imported only where it is
installed, so ``import clusterformer`` registers the data sets.
"""

import importlib.util

if importlib.util.find_spec("detectron2") is not None:
    from . import (
        register_classification,  # noqa: F401  (imagenet_*, digits_*)
        register_coco_instances,  # noqa: F401  (checked loaders for coco_2017_*, ...)
        register_shapes,  # noqa: F401  (registers shapes_{panoptic,instance,...}_*)
    )
    from .register_ade20k_panoptic import register_ade20k_panoptic  # noqa: F401
    from .register_ade20k_semantic import register_ade20k_semantic  # noqa: F401
    from .register_coco_panoptic_semseg import register_coco_panoptic_with_sem_seg  # noqa: F401
