"""COCO instances (``coco_2017_{train,val}``, ...): Detectron2's registrations, with a checked loader.

Detectron2 registers these names itself with ``load_coco_json``, which joins each image's
``file_name`` from the JSON to the image folder unchecked. Their metadata stays Detectron2's;
only the loader is replaced by :func:`~.register_formats.load_coco_instances_checked`, which
first names a missing JSON or image folder and then rejects records that lead outside the image
folder.
"""

from detectron2.data import DatasetCatalog

from .register_formats import register_coco_instances_checked

# Detectron2's builtin COCO instance splits with annotations (the test splits have none).
COCO_INSTANCE_SPLITS = (
    "coco_2014_train",
    "coco_2014_val",
    "coco_2014_minival",
    "coco_2014_valminusminival",
    "coco_2017_train",
    "coco_2017_val",
    "coco_2017_val_100",
)

for _name in COCO_INSTANCE_SPLITS:
    if _name in DatasetCatalog.list():
        register_coco_instances_checked(_name)
