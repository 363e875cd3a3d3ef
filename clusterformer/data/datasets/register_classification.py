"""Registration of the classification data sets: ImageNet-1K and scikit-learn's digits.

* ``imagenet_{train,val}``: class folders ``$DETECTRON2_DATASETS/imagenet/{train,val}/<wnid>/``
  (torchvision ImageFolder layout, see datasets/README.md); classes = sorted folder names.
* ``digits_{train,val}``: scikit-learn's 8x8 digits written as 32x32 class folders on first use
  (see :mod:`.digits`); classes ``"0"`` .. ``"9"``.
"""

import os
from typing import Optional

from .class_folder import register_class_folder
from .dataset_paths import datasets_root, require_paths
from .digits import CLASS_NAMES as DIGIT_CLASSES
from .digits import default_root as digits_root
from .digits import ensure_digits


def register_imagenet(root: Optional[str] = None) -> None:
    """Register ``imagenet_{train,val}``: the class folders under ``root`` (default
    ``$DETECTRON2_DATASETS/imagenet``), checked when first loaded."""
    root = root or os.path.join(datasets_root(), "imagenet")
    for split in ("train", "val"):
        name = f"imagenet_{split}"
        folder = os.path.join(root, split)
        register_class_folder(
            name,
            folder,
            before_load=lambda name=name, folder=folder: require_paths(
                name, {"class folder": folder}
            ),
        )


def register_digits(root: Optional[str] = None) -> None:
    """Register ``digits_{train,val}``: scikit-learn's digits, written under ``root`` when first
    loaded."""
    root = root or digits_root()
    for split in ("train", "val"):
        register_class_folder(
            f"digits_{split}",
            os.path.join(root, split),
            DIGIT_CLASSES,
            before_load=lambda: ensure_digits(root),
        )
