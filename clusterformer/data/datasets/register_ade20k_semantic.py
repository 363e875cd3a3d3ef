"""ADE20K semantic segmentation (150 classes): ``ade20k_sem_seg_{train,val}``.

Detectron2 registers these names itself. :func:`use_checked_ade20k_semantic_loaders` registers
them again with the same files and metadata plus ``stuff_colors`` (for visualisation), and a
loader that checks the folders first, so that a missing data set gives an error that says what to
create instead of an empty listing. Nothing is replaced on import: another project in the same
process may rely on Detectron2's own registration, so only an entry point that asks (train_net.py,
the demo) gets these.

Expected under ``$DETECTRON2_DATASETS/ADEChallengeData2016``: ``images/{training,validation}/*.jpg``
and ``annotations_detectron2/{training,validation}/*.png`` (labels 0..149, 255 = ignore), written
by ``datasets/prepare_ade20k_sem_seg.py`` from the benchmark's ``annotations/``.
"""

from __future__ import annotations

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

from .ade20k_categories import ADE20K_COLORS
from .dataset_paths import datasets_root, require_paths
from .register_formats import register_sem_seg_folder

# name: (image_root, sem_seg_root), under the root.
ADE20K_SEMANTIC_SPLITS = {
    "ade20k_sem_seg_train": (
        "ADEChallengeData2016/images/training",
        "ADEChallengeData2016/annotations_detectron2/training",
    ),
    "ade20k_sem_seg_val": (
        "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/annotations_detectron2/validation",
    ),
}


def register_ade20k_semantic(name: str, image_root: str, sem_seg_root: str) -> None:
    """Register ``name`` (replacing an earlier registration of it, e.g. Detectron2's own)."""

    def check_folders() -> None:
        require_paths(name, {"image folder": image_root})
        require_paths(
            name,
            {"label folder": sem_seg_root},
            how_to_make="Create it with datasets/prepare_ade20k_sem_seg.py",
        )

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    register_sem_seg_folder(
        name,
        image_root,
        sem_seg_root,
        image_ext="jpg",
        before_load=check_folders,
        stuff_classes=list(ADE20K_SEM_SEG_CATEGORIES),
        stuff_colors=[list(color) for color in ADE20K_COLORS],
    )


def register_all_ade20k_semantic(root: str) -> None:
    """Register both splits found under ``root`` (nothing is read now)."""
    for name, (image_root, sem_seg_root) in ADE20K_SEMANTIC_SPLITS.items():
        register_ade20k_semantic(
            name, os.path.join(root, image_root), os.path.join(root, sem_seg_root)
        )


def use_checked_ade20k_semantic_loaders() -> None:
    """Replace Detectron2's ``ade20k_sem_seg_{train,val}`` by :func:`register_all_ade20k_semantic`
    of ``$DETECTRON2_DATASETS``. Calling it again changes nothing more."""
    register_all_ade20k_semantic(datasets_root())
