"""COCO instances (``coco_2017_{train,val}``, ...): Detectron2's registrations, with a checked loader.

Detectron2 registers these names itself with ``load_coco_json``, which joins each image's
``file_name`` from the JSON to the image folder unchecked. :func:`use_checked_coco_loaders`
replaces only their loader by :func:`~.register_formats.load_coco_instances_checked`, which first
names a missing JSON or image folder and then rejects records that lead outside the image folder;
their metadata stays Detectron2's. Nothing is replaced on import: another project in the same
process may rely on Detectron2's own loaders, so only an entry point that asks (train_net.py,
the demo) gets the checked ones.
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


def use_checked_coco_loaders() -> None:
    """Give each of Detectron2's registered :data:`COCO_INSTANCE_SPLITS` the checked loader
    (same JSON, image folder and metadata). Calling it again changes nothing more."""
    registered = set(DatasetCatalog.list())
    for name in COCO_INSTANCE_SPLITS:
        if name in registered:
            register_coco_instances_checked(name)
