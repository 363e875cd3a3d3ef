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

from typing import Any, Dict

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .dataset_paths import require_paths
from .register_formats import (
    PanopticFiles,
    panoptic_metadata,
    register_panoptic_json,
    unregistered_splits,
)

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
    return panoptic_metadata(COCO_CATEGORIES)


def register_coco_panoptic_with_sem_seg(
    name: str, metadata: Dict[str, Any], files: PanopticFiles, instances_json: str
) -> None:
    """Register ``name``: a COCO-format panoptic data set with semantic PNGs (read lazily);
    ``instances_json`` is the COCO instances JSON of the same images (for box / mask AP)."""

    def check_folders() -> None:
        require_paths(
            name,
            {
                "image folder": files.image_root,
                "panoptic PNG folder": files.panoptic_root,
                "panoptic JSON": files.panoptic_json,
            },
        )
        require_paths(
            name,
            {"semantic PNG folder": files.sem_seg_root},
            how_to_make="Create it with datasets/prepare_coco_semantic_annos_from_panoptic_annos.py",
        )

    register_panoptic_json(
        name,
        metadata,
        files,
        evaluator_type="coco_panoptic_seg",
        instances_json=instances_json,
        before_load=check_folders,
    )


def register_all_coco_panoptic_with_sem_seg(root: str) -> None:
    """Register the two COCO 2017 splits found under ``root`` (nothing is read now); a split
    registered already (by Mask2Former) is kept."""
    metadata = coco_panoptic_metadata()
    for name, paths in unregistered_splits(root, COCO_PANOPTIC_WITH_SEM_SEG_SPLITS):
        *panoptic, instances_json = paths
        register_coco_panoptic_with_sem_seg(
            name, metadata, PanopticFiles(*panoptic), instances_json
        )
