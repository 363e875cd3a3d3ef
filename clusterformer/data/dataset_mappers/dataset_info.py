"""What a mapper needs to know about its training data set (class count, ignore label).

Mask2Former reads these from the metadata of ``DATASETS.TRAIN[0]``; so do these helpers, falling
back to ``MODEL.SEM_SEG_HEAD`` keys when the data set does not define them.
"""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata

from .registry import DATASET_MAPPER_REGISTRY


def training_metadata(cfg: CfgNode) -> Metadata:
    """Metadata of the first training data set (an empty ``Metadata`` when there is none)."""
    if not cfg.DATASETS.TRAIN:
        return Metadata()
    return MetadataCatalog.get(cfg.DATASETS.TRAIN[0])


def num_classes_for_training(cfg: CfgNode, class_list_key: str) -> int:
    """Number of contiguous class ids: ``len(metadata.<class_list_key>)`` of the first training
    data set (``stuff_classes`` lists every class of a panoptic / semantic data set,
    ``thing_classes`` those of an instance / detection one), else ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``.
    """
    classes = training_metadata(cfg).get(class_list_key, None)
    return len(classes) if classes else int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)


def ignore_label_for_training(cfg: CfgNode) -> int:
    """The training data set's ``ignore_label``; it must agree with ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``
    when both are set, since the loss ignores one value and the labels would carry the other."""
    config_value = int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
    metadata = training_metadata(cfg)
    dataset_value = metadata.get("ignore_label", None)
    if dataset_value is None:
        return config_value
    if int(dataset_value) != config_value:
        raise ValueError(
            f"Data set {cfg.DATASETS.TRAIN[0]!r} has ignore_label={dataset_value}, but "
            f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE={config_value}; set them to the same value"
        )
    return int(dataset_value)


def class_list_key(cfg: CfgNode) -> str:
    """The metadata class list whose indices are the class ids of ``INPUT.DATASET_MAPPER_NAME``'s
    mapper (its ``CLASS_LIST_KEY``: ``stuff_classes`` or ``thing_classes``)."""
    mapper = DATASET_MAPPER_REGISTRY.get(cfg.INPUT.DATASET_MAPPER_NAME)
    return getattr(mapper, "CLASS_LIST_KEY", "stuff_classes")
