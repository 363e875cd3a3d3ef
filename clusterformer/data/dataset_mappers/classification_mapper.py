"""Dataset mapper for image classification (the ImageNet recipe of the released configs)."""

from __future__ import annotations

import copy
import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from torchvision.transforms import v2 as T

from .inference_transform import classification_test_ops
from .mapper_io import read_image_file
from .registry import register_mapper


def random_erase_(
    image: torch.Tensor,
    probability: float,
    area_range: Tuple[float, float] = (0.02, 1.0 / 3.0),
    log_aspect_range: Tuple[float, float] = (math.log(0.3), math.log(1 / 0.3)),
    max_attempts: int = 10,
) -> torch.Tensor:
    """Random Erasing (Zhong et al.) in place on a ``(C, H, W)`` uint8 image, random-pixel fill.

    torchvision's RandomErasing fills with N(0, 1) values, meant for normalised float images; on
    uint8 they would wrap around, so this version draws uniform 0..255 noise instead.
    """
    if probability <= 0 or torch.rand(()) >= probability:
        return image
    _, H, W = image.shape
    for _ in range(max_attempts):
        area = H * W * float(torch.empty(()).uniform_(*area_range))
        aspect = math.exp(float(torch.empty(()).uniform_(*log_aspect_range)))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if 0 < h < H and 0 < w < W:
            top = int(torch.randint(0, H - h + 1, ()))
            left = int(torch.randint(0, W - w + 1, ()))
            noise = torch.randint(0, 256, (image.shape[0], h, w), dtype=image.dtype)
            image[:, top : top + h, left : left + w] = noise
            break
    return image


@register_mapper("classification")
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
            ops = [T.RandomResizedCrop(train_crop, scale=tuple(crop_scale), antialias=True)]
            if horizontal_flip:
                ops.append(T.RandomHorizontalFlip())
            if rand_augment_magnitude is not None:
                ops.append(T.RandAugment(num_ops=2, magnitude=rand_augment_magnitude))
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
        image = read_image_file(dataset_dict["file_name"], "RGB")
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
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
