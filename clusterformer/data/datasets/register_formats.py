"""Catalog registration of the standard data set formats, shared by COCO, ADE20K and shapes.

* :func:`panoptic_metadata`: class lists and id maps from a COCO-style category table.
* :func:`register_panoptic_json`: a COCO-format panoptic data set (:class:`PanopticFiles`).
* :func:`register_sem_seg_folder`: a semantic data set (image folder + label PNG folder).
* :func:`load_coco_instances_checked` / :func:`register_coco_instances_checked`: Detectron2's
  ``load_coco_json`` with its records checked to stay inside the image folder.
* :func:`registered_elsewhere`: whether a name this project shares with Mask2Former is taken;
  :func:`unregistered_splits`: the splits of a table whose names are not taken, under a root.

Registration reads nothing: each loader runs ``before_load`` (a folder check, or the generation
of a synthetic data set) when the data set is first used.
"""

from __future__ import annotations

import logging
import os
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg

from .dataset_paths import require_paths
from .panoptic_json import check_first_record_files, load_panoptic_json
from .path_safety import check_records_inside

logger = logging.getLogger(__name__)

# Mask2Former's values for every panoptic / semantic data set: void label, panoptic id divisor.
IGNORE_LABEL = 255
LABEL_DIVISOR = 1000


class PanopticFiles(NamedTuple):
    """The files of a COCO-format panoptic data set; also the metadata keys naming them."""

    image_root: str  # the images named in the JSON's ``images``
    panoptic_root: str  # the panoptic PNGs named in the JSON's ``annotations``
    panoptic_json: str  # the COCO panoptic JSON
    sem_seg_root: str  # the semantic PNGs, named like the panoptic PNGs


def panoptic_metadata(categories: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Class names, colours and id maps of ``categories`` (dicts with ``id``, ``name``,
    ``color``, ``isthing``), in Mask2Former's convention for COCO panoptic.

    Contiguous ids follow the order of ``categories``. ``stuff_*`` lists *all* classes and
    ``stuff_dataset_id_to_contiguous_id`` maps every category, so that the semantic evaluator sees
    one label space; ``thing_*`` holds the things with their ids in that same space.
    """
    things = [c for c in categories if c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [list(c["color"]) for c in things],
        "stuff_classes": [c["name"] for c in categories],
        "stuff_colors": [list(c["color"]) for c in categories],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def register_panoptic_json(
    name: str,
    metadata: Dict[str, Any],
    files: PanopticFiles,
    *,
    evaluator_type: str,
    instances_json: Optional[str] = None,
    before_load: Optional[Callable[[], Any]] = None,
) -> None:
    """Register ``name``: the dicts of :func:`~.panoptic_json.load_panoptic_json`, read lazily.

    Metadata: the ``files``, ``evaluator_type``, ``ignore_label`` 255, ``label_divisor`` 1000,
    ``json_file=instances_json`` when given (for instance AP), and ``metadata`` (see
    :func:`panoptic_metadata`), whose id maps also map the JSON's category ids.
    """

    def load() -> List[dict]:
        if before_load is not None:
            before_load()
        dataset_dicts = load_panoptic_json(
            files.panoptic_json,
            files.image_root,
            files.panoptic_root,
            files.sem_seg_root,
            metadata["thing_dataset_id_to_contiguous_id"],
            metadata["stuff_dataset_id_to_contiguous_id"],
        )
        check_first_record_files(name, files.panoptic_json, dataset_dicts)
        return dataset_dicts

    DatasetCatalog.register(name, load)
    instance_annotations = {} if instances_json is None else {"json_file": instances_json}
    MetadataCatalog.get(name).set(
        **files._asdict(),
        evaluator_type=evaluator_type,
        ignore_label=IGNORE_LABEL,
        label_divisor=LABEL_DIVISOR,
        **instance_annotations,
        **metadata,
    )


def register_sem_seg_folder(
    name: str,
    image_root: str,
    sem_seg_root: str,
    image_ext: str,
    before_load: Optional[Callable[[], Any]] = None,
    **metadata: Any,
) -> None:
    """Register ``name``: Detectron2's ``load_sem_seg`` of ``<image_root>/*.<image_ext>`` with
    ``<sem_seg_root>/*.png`` labels, read lazily. Metadata: the two roots,
    ``evaluator_type="sem_seg"``, ``ignore_label`` 255 and ``metadata`` (``stuff_classes``, ...).
    """

    def load() -> List[dict]:
        if before_load is not None:
            before_load()
        return load_sem_seg(sem_seg_root, image_root, gt_ext="png", image_ext=image_ext)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        evaluator_type="sem_seg",
        ignore_label=IGNORE_LABEL,
        **metadata,
    )


def load_coco_instances_checked(json_file: str, image_root: str, name: str) -> List[dict]:
    """Detectron2's ``load_coco_json(json_file, image_root, name)``, after checking that both
    exist, with every record's ``file_name`` checked to lie inside ``image_root``.

    Raises:
        FileNotFoundError naming the data set and the missing path; ``UnsafePathError`` (a
        ``ValueError``) naming the JSON and the record whose ``file_name`` leads outside
        ``image_root`` (``..`` or an absolute path elsewhere in the JSON).
    """
    require_paths(name, {"instances JSON": json_file, "image folder": image_root})
    dataset_dicts = load_coco_json(json_file, image_root, name)
    check_records_inside(dataset_dicts, {"file_name": image_root}, source=json_file)
    return dataset_dicts


def register_coco_instances_checked(name: str) -> None:
    """Give the registered COCO-instances data set ``name`` (e.g. Detectron2's ``coco_2017_train``)
    the checking loader :func:`load_coco_instances_checked`, with the ``json_file`` and
    ``image_root`` of its metadata; the metadata itself stays as it is."""
    metadata = MetadataCatalog.get(name)
    json_file, image_root = metadata.json_file, metadata.image_root
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_instances_checked(json_file, image_root, name))


def registered_elsewhere(name: str) -> bool:
    """True, with a log line, when ``name`` is in the ``DatasetCatalog`` already.

    Mask2Former registers some of the names this project registers (COCO panoptic with semantic
    labels, ADE20K panoptic) with the same files and metadata. Registering a name twice raises in
    ``DatasetCatalog``, so when Mask2Former (or anyone) came first its registration is kept.
    """
    if name not in DatasetCatalog.list():
        return False
    logger.info("Data set %r is registered already (e.g. by Mask2Former); keeping that one", name)
    return True


def unregistered_splits(
    root: str, splits: Mapping[str, Sequence[str]]
) -> Iterator[Tuple[str, List[str]]]:
    """Each ``name, paths`` of ``splits`` (name: paths relative to ``root``) with its paths joined
    under ``root``, passing over the names :func:`registered_elsewhere` finds taken.

    Lazy, so that a caller registering each split before the next is checked sees the catalog as
    it registers.
    """
    for name, relative_paths in splits.items():
        if registered_elsewhere(name):
            continue
        yield name, [os.path.join(root, p) for p in relative_paths]
