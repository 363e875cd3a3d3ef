"""Data set registration (DatasetCatalog / MetadataCatalog) and the data set generators.

The generators and format helpers (``shapes``, ``mask_encoding``, ``class_folder``'s loader)
import without detectron2; the registration modules need it and are imported only where it is
installed, so ``import clusterformer`` registers the data sets.
"""

import importlib.util

if importlib.util.find_spec("detectron2") is not None:
    from . import register_shapes  # noqa: F401  (registers shapes_{panoptic,instance,...}_*)
