"""Dataset mapper for image classification (the ImageNet recipe of the released configs)."""

from __future__ import annotations

import copy
from typing import Optional, Sequence

from detectron2.config import CfgNode, configurable
from torchvision.transforms import v2 as T

from ..image_io import read_image_file
from .augmentations import build_classification_train_ops, classification_test_ops, random_erase_
from .base import CLASSIFICATION_MAPPER_NAME, image_to_chw_tensor, register_mapper


@register_mapper(CLASSIFICATION_MAPPER_NAME)
class ClassificationDatasetMapper:
    """Read an image, augment it, and return ``{"image": (3, H, W) uint8, "label": int, ...}``.

    Training: RandomResizedCrop(``train_crop``, ``crop_scale``) -> optional horizontal flip ->
    optional RandAugment (2 ops, ``rand_augment_magnitude``) -> Random Erasing (``random_erasing``).
    Testing: resize the short side to ``test_resize`` -> centre crop ``test_crop`` (248 -> 224 for
    ImageNet). The image is returned in ``image_format`` channel order (the model normalises it).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        image_format: str,
        train_crop: int,
        crop_scale: Sequence[float],
        horizontal_flip: bool,
        rand_augment_magnitude: Optional[int],
        random_erasing: float,
        test_resize: int,
        test_crop: int,
    ):
        self.is_train = is_train
        self.image_format = image_format
        self.random_erasing = random_erasing if is_train else 0.0
        if is_train:
            ops = build_classification_train_ops(
                train_crop, crop_scale, horizontal_flip, rand_augment_magnitude
            )
        else:
            ops = classification_test_ops(test_resize, test_crop)
        self.transform = T.Compose(ops)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict:
        c = cfg.INPUT.CLASSIFICATION
        if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
            raise ValueError(
                f"INPUT.RANDOM_FLIP={cfg.INPUT.RANDOM_FLIP!r}: classification supports 'horizontal' or 'none'"
            )
        return {
            "is_train": is_train,
            "image_format": cfg.INPUT.FORMAT,
            "train_crop": c.TRAIN_CROP,
            "crop_scale": c.CROP_SCALE,
            "horizontal_flip": cfg.INPUT.RANDOM_FLIP == "horizontal",
            "rand_augment_magnitude": c.RAND_AUGMENT_MAGNITUDE if c.RAND_AUGMENT else None,
            "random_erasing": c.RANDOM_ERASING,
            "test_resize": c.TEST_RESIZE,
            "test_crop": c.TEST_CROP,
        }

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        # Augment in RGB (RandAugment's colour ops assume it), convert to the model's order last.
        image = image_to_chw_tensor(read_image_file(dataset_dict["file_name"], "RGB"))
        image = self.transform(image)
        image = random_erase_(image, self.random_erasing)
        if self.image_format == "BGR":
            image = image.flip(0)
        elif self.image_format != "RGB":
            raise ValueError(
                f"INPUT.FORMAT={self.image_format!r}: classification supports RGB or BGR"
            )
        dataset_dict["image"] = image.contiguous()
        dataset_dict["height"], dataset_dict["width"] = image.shape[-2:]
        if "label" in dataset_dict:
            dataset_dict["label"] = int(dataset_dict["label"])
        return dataset_dict
