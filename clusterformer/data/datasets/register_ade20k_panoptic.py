"""ADE20K panoptic segmentation (150 classes, 100 things): ``ade20k_panoptic_{train,val}``.

Expected under ``$DETECTRON2_DATASETS/ADEChallengeData2016``: ``images/{training,validation}``,
``ade20k_panoptic_{train,val}/`` PNGs and ``ade20k_panoptic_{train,val}.json`` (COCO panoptic
format, written by ``datasets/prepare_ade20k_pan_seg.py``) and ``annotations_detectron2/`` (for
the semantic evaluator, from ``datasets/prepare_ade20k_sem_seg.py``).

No instance JSON is registered (``json_file`` is unset), so the evaluators report PQ and mIoU but
no instance AP on these names.
"""

from __future__ import annotations

import json
from typing import Any, Dict

from detectron2.utils.file_io import PathManager

from .ade20k_categories import ade20k_categories
from .dataset_paths import require_paths
from .register_formats import (
    PanopticFiles,
    panoptic_metadata,
    register_panoptic_json,
    unregistered_splits,
)

# name: (image_root, panoptic_root, panoptic_json, sem_seg_root), under the root.
ADE20K_PANOPTIC_SPLITS = {
    "ade20k_panoptic_train": (
        "ADEChallengeData2016/images/training",
        "ADEChallengeData2016/ade20k_panoptic_train",
        "ADEChallengeData2016/ade20k_panoptic_train.json",
        "ADEChallengeData2016/annotations_detectron2/training",
    ),
    "ade20k_panoptic_val": (
        "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/ade20k_panoptic_val",
        "ADEChallengeData2016/ade20k_panoptic_val.json",
        "ADEChallengeData2016/annotations_detectron2/validation",
    ),
}


def ade20k_panoptic_metadata() -> Dict[str, Any]:
    """Names, colours and id maps; the panoptic JSON's category ids are the contiguous ids 0..149.

    As for COCO panoptic, ``stuff_*`` covers all 150 classes and ``thing_*`` the 100 things with
    their ids in the 150-class space.
    """
    return panoptic_metadata(ade20k_categories())


def check_json_categories(panoptic_json: str) -> None:
    """The JSON's categories must be the 150 ADE20K classes with the same thing / stuff split."""
    with PathManager.open(panoptic_json, "r") as f:
        categories = json.load(f).get("categories", [])
    expected = {c["id"]: c["isthing"] for c in ade20k_categories()}
    found = {c["id"]: int(c.get("isthing", 0)) for c in categories}
    if found != expected:
        differing = sorted(set(found.items()) ^ set(expected.items()))[:5]
        raise ValueError(
            f"{panoptic_json!r}: its categories are not the 150 ADE20K classes with the expected "
            f"thing/stuff split (first differences as (id, isthing): {differing}); "
            "re-create it with datasets/prepare_ade20k_pan_seg.py"
        )


def register_ade20k_panoptic(name: str, metadata: Dict[str, Any], files: PanopticFiles) -> None:
    """Register ``name``: ADE20K panoptic in COCO format (read lazily)."""

    def check_inputs() -> None:
        require_paths(name, {"image folder": files.image_root})
        require_paths(
            name,
            {"panoptic PNG folder": files.panoptic_root, "panoptic JSON": files.panoptic_json},
            how_to_make="Create them with datasets/prepare_ade20k_pan_seg.py",
        )
        require_paths(
            name,
            {"semantic label folder": files.sem_seg_root},
            how_to_make="Create it with datasets/prepare_ade20k_sem_seg.py",
        )
        check_json_categories(files.panoptic_json)

    register_panoptic_json(
        name, metadata, files, evaluator_type="ade20k_panoptic_seg", before_load=check_inputs
    )


def register_all_ade20k_panoptic(root: str) -> None:
    """Register both splits found under ``root`` (nothing is read now); a split registered
    already (by Mask2Former) is kept."""
    metadata = ade20k_panoptic_metadata()
    for name, paths in unregistered_splits(root, ADE20K_PANOPTIC_SPLITS):
        register_ade20k_panoptic(name, metadata, PanopticFiles(*paths))
