"""What the shapes data set is: its categories, its parameters and its file layout.

Kept apart from the generator (:mod:`.shapes`) so that the Detectron2 registration can set all
metadata at import time without importing the generator (which ``python -m`` runs as a script).
"""

import os
from dataclasses import dataclass
from typing import Tuple

from .dataset_paths import datasets_root

SPLITS = ("train", "val")

# Panoptic order (things first, then stuff) is the contiguous id order of the semantic PNGs and
# of Detectron2's metadata, as COCO_CATEGORIES orders COCO. Ids have gaps on purpose, so that the
# dataset-id -> contiguous-id mappings are exercised.
THING_CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "square", "supercategory": "shape", "isthing": 1, "color": [0, 0, 142]},
    {"id": 3, "name": "triangle", "supercategory": "shape", "isthing": 1, "color": [250, 170, 30]},
    {"id": 5, "name": "star", "supercategory": "shape", "isthing": 1, "color": [119, 11, 32]},
]
STUFF_CATEGORIES = [
    {"id": 10, "name": "sky", "supercategory": "background", "isthing": 0, "color": [70, 130, 180]},
    {
        "id": 11,
        "name": "grass",
        "supercategory": "background",
        "isthing": 0,
        "color": [107, 142, 35],
    },
    {
        "id": 13,
        "name": "wall",
        "supercategory": "background",
        "isthing": 0,
        "color": [152, 102, 81],
    },
]
CATEGORIES = THING_CATEGORIES + STUFF_CATEGORIES


@dataclass(frozen=True)
class ShapesConfig:
    """Parameters of the generated data set (all are recorded in its manifest).

    The defaults (300 + 60 scenes of 128 x 160 pixels, 320 + 100 classification images of
    64 x 64) generate in under 10 s on one CPU core. Scenes are wider than high so that a
    height/width mix-up cannot go unnoticed.
    """

    seed: int = 0
    image_height: int = 128
    image_width: int = 160
    num_train_images: int = 300
    num_val_images: int = 60
    min_things: int = 1
    max_things: int = 5
    # Things per training scene when they differ from the val scenes' (0: min_things /
    # max_things). Denser training scenes give more thing samples per iteration while the val
    # split, drawn with min_things / max_things, stays byte-identical.
    train_min_things: int = 0
    train_max_things: int = 0
    # Things with fewer visible pixels are not annotated (their pixels are void).
    min_visible_area: int = 24
    classification_image_size: int = 64
    classification_train_per_class: int = 80
    classification_val_per_class: int = 25

    def __post_init__(self) -> None:
        minimums = {
            1: ("image_height", "image_width", "classification_image_size", "min_visible_area"),
            0: (
                "num_train_images",
                "num_val_images",
                "min_things",
                "train_min_things",
                "train_max_things",
                "classification_train_per_class",
                "classification_val_per_class",
            ),
        }
        for minimum, names in minimums.items():
            for name in names:
                if getattr(self, name) < minimum:
                    raise ValueError(
                        f"ShapesConfig.{name} must be >= {minimum}, got {getattr(self, name)}"
                    )
        for split in SPLITS:
            low, high = self.things_range(split)
            if high < low:
                raise ValueError(
                    f"ShapesConfig: {split} scenes need min things <= max things, got "
                    f"{low} and {high} (min_things, max_things, train_min_things, "
                    "train_max_things; 0 means the val value)"
                )

    def things_range(self, split: str) -> Tuple[int, int]:
        """(min, max) things per scene of ``split``."""
        if check_split(split) == "train":
            return (
                self.train_min_things or self.min_things,
                self.train_max_things or self.max_things,
            )
        return self.min_things, self.max_things

    def num_images(self, split: str) -> int:
        return {"train": self.num_train_images, "val": self.num_val_images}[check_split(split)]

    def classification_per_class(self, split: str) -> int:
        counts = {
            "train": self.classification_train_per_class,
            "val": self.classification_val_per_class,
        }
        return counts[check_split(split)]


@dataclass(frozen=True)
class ShapesSplitPaths:
    """Where the files of one split live (the names of the COCO 2017 layout)."""

    image_root: str
    instances_json: str
    panoptic_json: str
    panoptic_root: str
    sem_seg_root: str
    classification_root: str


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; expected one of {SPLITS}")
    return split


def default_root() -> str:
    """``$DETECTRON2_DATASETS/shapes``; ``DETECTRON2_DATASETS`` defaults to ``datasets``."""
    return os.path.join(datasets_root(), "shapes")


def split_paths(root: str, split: str) -> ShapesSplitPaths:
    """The paths of ``split`` under ``root`` (no disk access)."""
    check_split(split)
    return ShapesSplitPaths(
        image_root=os.path.join(root, split),
        instances_json=os.path.join(root, "annotations", f"instances_{split}.json"),
        panoptic_json=os.path.join(root, "annotations", f"panoptic_{split}.json"),
        panoptic_root=os.path.join(root, f"panoptic_{split}"),
        sem_seg_root=os.path.join(root, f"panoptic_semseg_{split}"),
        classification_root=os.path.join(root, "classification", split),
    )
