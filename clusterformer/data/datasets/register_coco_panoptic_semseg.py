"""COCO panoptic 2017 with semantic labels: ``coco_2017_{train,val}_panoptic_with_sem_seg``.

The names and metadata are Mask2Former's, so its configs and evaluators find what they expect.
COCO instances (``coco_2017_{train,val}``) and Detectron2's own panoptic variants are registered by
Detectron2 itself (``detectron2.data.datasets.builtin``) and are not re-registered here.

Expected under ``$DETECTRON2_DATASETS/coco``: ``{train,val}2017/`` images,
``panoptic_{train,val}2017/`` PNGs, ``annotations/panoptic_{train,val}2017.json``,
``annotations/instances_{train,val}2017.json`` and ``panoptic_semseg_{train,val}2017/`` (written by
``datasets/prepare_coco_semantic_annos_from_panoptic_annos.py``).
"""

from __future__ import annotations

import os
from typing import Any, Dict

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .dataset_paths import datasets_root, require_paths
from .panoptic_json import check_first_record_files, load_panoptic_json

# name: (image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json), under the root.
COCO_PANOPTIC_WITH_SEM_SEG_SPLITS = {
    "coco_2017_train_panoptic_with_sem_seg": (
        "coco/train2017",
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/panoptic_semseg_train2017",
        "coco/annotations/instances_train2017.json",
    ),
    "coco_2017_val_panoptic_with_sem_seg": (
        "coco/val2017",
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/panoptic_semseg_val2017",
        "coco/annotations/instances_val2017.json",
    ),
}


def coco_panoptic_metadata() -> Dict[str, Any]:
    """Class names, colours and id maps of the 133 COCO panoptic classes (80 things, 53 stuff).

    Contiguous ids follow ``COCO_CATEGORIES`` order. ``stuff_*`` lists *all* 133 classes and
    ``stuff_dataset_id_to_contiguous_id`` maps every category, so that the semantic evaluator sees
    one label space; ``thing_*`` holds the 80 things with their ids in that same space (not 0..79).
    """
    things = [c for c in COCO_CATEGORIES if c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c["color"] for c in things],
        "stuff_classes": [c["name"] for c in COCO_CATEGORIES],
        "stuff_colors": [c["color"] for c in COCO_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(COCO_CATEGORIES) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(COCO_CATEGORIES)},
    }


def register_coco_panoptic_with_sem_seg(
    name: str,
    metadata: Dict[str, Any],
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: str,
    instances_json: str,
) -> None:
    """Register ``name``: a COCO-format panoptic data set with semantic PNGs (read lazily)."""

    def load():
        require_paths(
            name,
            {
                "image folder": image_root,
                "panoptic PNG folder": panoptic_root,
                "panoptic JSON": panoptic_json,
            },
        )
        require_paths(
            name,
            {"semantic PNG folder": sem_seg_root},
            how_to_make="Create it with datasets/prepare_coco_semantic_annos_from_panoptic_annos.py",
        )
        dataset_dicts = load_panoptic_json(
            panoptic_json,
            image_root,
            panoptic_root,
            sem_seg_root,
            metadata["thing_dataset_id_to_contiguous_id"],
            metadata["stuff_dataset_id_to_contiguous_id"],
        )
        check_first_record_files(name, dataset_dicts)
        return dataset_dicts

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **metadata,
    )


def register_all_coco_panoptic_with_sem_seg(root: str) -> None:
    """Register the two COCO 2017 splits found under ``root`` (nothing is read now)."""
    metadata = coco_panoptic_metadata()
    for name, relative_paths in COCO_PANOPTIC_WITH_SEM_SEG_SPLITS.items():
        image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json = (
            os.path.join(root, p) for p in relative_paths
        )
        register_coco_panoptic_with_sem_seg(
            name,
            metadata,
            image_root,
            panoptic_root,
            panoptic_json,
            sem_seg_root,
            instances_json,
        )


register_all_coco_panoptic_with_sem_seg(datasets_root())
