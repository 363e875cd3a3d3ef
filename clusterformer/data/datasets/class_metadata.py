"""Class metadata of data sets registered with Detectron2's own API, available before loading.

``register_coco_instances`` (and the ``_separated`` data set of
``register_coco_panoptic_separated``) set ``thing_classes`` and
``thing_dataset_id_to_contiguous_id`` only when the data set is loaded (``load_coco_json`` fills
them). A model is built before its data sets are loaded, so ClusterFormer, which needs the class
lists to build (which ids are things; the class count to check ``NUM_CLASSES``), would find none.

:func:`class_metadata` fills them first, from the ``categories`` of the metadata's ``json_file``:
the same values ``load_coco_json`` sets later (names sorted by category id; ids mapped to
``0..K-1`` in sorted order), so the later assignment agrees with them (Detectron2's ``Metadata``
refuses to change a value). It parses only the JSON: no pycocotools index, no data set dicts, no
image access; the data set itself is not loaded (a predictor or demo may run where it is absent,
and loading a large training set only to read its classes would cost minutes). A data set with
its own loader that sets class lists only when loaded should set them at registration instead.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)


def read_coco_categories(json_file: str) -> List[Dict[str, Any]]:
    """The ``categories`` of a COCO-format JSON (instances or panoptic), each a dict with at least
    an int ``id`` and a str ``name``; errors name the file and what is wrong."""
    with PathManager.open(json_file, "r") as f:
        try:
            content = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{json_file}: not valid JSON ({error})") from error
    categories = content.get("categories") if isinstance(content, dict) else None
    if not isinstance(categories, list) or not categories:
        raise ValueError(
            f"{json_file}: no 'categories' list; a COCO-format JSON lists its classes as "
            "'categories': [{'id': 1, 'name': ...}, ...]"
        )
    for index, category in enumerate(categories):
        if (
            not isinstance(category, dict)
            or not isinstance(category.get("id"), int)
            or not isinstance(category.get("name"), str)
        ):
            raise ValueError(
                f"{json_file}: categories[{index}] = {category!r} needs an int 'id' and a str 'name'"
            )
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{json_file}: 'categories' repeats ids ({sorted(ids)})")
    return categories


def coco_json_class_metadata(json_file: str) -> Dict[str, Any]:
    """What ``load_coco_json(json_file, ..., dataset_name)`` puts in the metadata:
    ``thing_classes`` (names sorted by category id) and ``thing_dataset_id_to_contiguous_id``."""
    categories = sorted(read_coco_categories(json_file), key=lambda c: c["id"])
    return {
        "thing_classes": [c["name"] for c in categories],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def class_metadata(dataset_name: str) -> Metadata:
    """``MetadataCatalog.get(dataset_name)``, with ``thing_classes`` and
    ``thing_dataset_id_to_contiguous_id`` filled in from its ``json_file`` when it has neither
    (what Detectron2 would set on loading, see the module docstring). Unchanged otherwise, or
    when the data set is not registered or its ``json_file`` does not exist (a warning)."""
    metadata = MetadataCatalog.get(dataset_name)
    json_file: Optional[str] = metadata.get("json_file", None)
    if (
        not json_file
        or metadata.get("thing_classes", None)
        or metadata.get("thing_dataset_id_to_contiguous_id", None)
        or dataset_name not in DatasetCatalog.list()
    ):
        return metadata
    if not PathManager.exists(json_file):
        # Not an error here: a predictor may run where the data set is absent; the caller says
        # which class information it misses.
        logger.warning(
            "Data set %r: its json_file %s does not exist; no class names from it",
            dataset_name,
            json_file,
        )
        return metadata
    metadata.set(**coco_json_class_metadata(json_file))
    return metadata


def check_num_classes(
    num_classes: int, dataset_names: Sequence[str], class_list_key: str, config_key: str
) -> None:
    """Raise ``ValueError`` when one of ``dataset_names`` has a ``class_list_key`` list (after
    :func:`class_metadata`) whose length is not ``num_classes``, the value of ``config_key``.
    Data sets without that list are not checked (the mappers then use the config's value)."""
    for name in dataset_names:
        classes = class_metadata(name).get(class_list_key, None)
        if classes and len(classes) != num_classes:
            raise ValueError(
                f"{config_key}={num_classes}, but data set {name!r} has {len(classes)} classes "
                f"({class_list_key} in its metadata); set {config_key} {len(classes)}"
            )


__all__ = [
    "check_num_classes",
    "class_metadata",
    "coco_json_class_metadata",
    "read_coco_categories",
]
