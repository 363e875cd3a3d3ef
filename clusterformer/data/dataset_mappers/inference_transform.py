"""The test-time image transform of every mapper, defined once for the mappers and the predictor.

Segmentation and detection mappers resize the short side to ``INPUT.MIN_SIZE_TEST`` (the long
side capped at ``INPUT.MAX_SIZE_TEST``); the classification mapper resizes the short side to
``INPUT.CLASSIFICATION.TEST_RESIZE`` and centre-crops ``TEST_CROP``. The mappers build their test
pipelines from :func:`test_augmentations_from_config` and :func:`classification_test_ops`;
:func:`build_test_transform` wraps the same objects for in-memory images (the predictor), and
also says where the model input lies in the original image (:class:`InputGeometry`), which the
cluster visualisation needs to draw stride-s maps over the original picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from torchvision.transforms import v2 as tv_transforms

from .augmentations import build_test_augmentations

# INPUT.DATASET_MAPPER_NAME of the classification mapper (resize + centre crop at test time).
CLASSIFICATION_MAPPER_NAME = "classification"


def test_augmentations_from_config(cfg: CfgNode) -> List[T.Augmentation]:
    """The test-time augmentations of the segmentation / detection mappers (shortest-edge resize)."""
    return build_test_augmentations(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)


def classification_test_ops(test_resize: int, test_crop: int) -> List[torch.nn.Module]:
    """The classification mapper's test ops on ``(C, H, W)`` uint8 tensors: short side to
    ``test_resize`` (antialiased), then a ``test_crop`` square centre crop."""
    return [tv_transforms.Resize(test_resize, antialias=True), tv_transforms.CenterCrop(test_crop)]


@dataclass(frozen=True)
class InputGeometry:
    """Where the model input lies in the original image.

    ``original_hw``: the image given; ``resized_hw``: after the resize; ``crop_box``: ``(top,
    left, height, width)`` of the model input in resized coordinates (the whole resized image when
    nothing is cropped; top/left may be negative when a crop larger than the image pads it).
    """

    original_hw: Tuple[int, int]
    resized_hw: Tuple[int, int]
    crop_box: Tuple[int, int, int, int]

    @property
    def input_hw(self) -> Tuple[int, int]:
        return self.crop_box[2], self.crop_box[3]

    def input_map_to_original(self, values: np.ndarray, fill: int = -1) -> np.ndarray:
        """``(h_in, w_in)`` integer map over the model input -> ``(H, W)`` over the original image
        (nearest neighbour); original pixels the model did not see (cropped away) get ``fill``."""
        if tuple(values.shape) != self.input_hw:
            raise ValueError(
                f"InputGeometry: the map has shape {tuple(values.shape)}, the model input "
                f"{self.input_hw}"
            )
        top, left, height, width = self.crop_box
        resized = np.full(self.resized_hw, fill, dtype=np.int64)
        # Intersection of the crop box with the resized image (a crop may also pad).
        r0, r1 = max(top, 0), min(top + height, self.resized_hw[0])
        c0, c1 = max(left, 0), min(left + width, self.resized_hw[1])
        if r1 > r0 and c1 > c0:
            resized[r0:r1, c0:c1] = values[r0 - top : r1 - top, c0 - left : c1 - left]
        return resize_nearest(resized, self.original_hw)


def resize_nearest(values: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(h, w)`` integer map (pixel centres, no rounding bias)."""
    h, w = values.shape
    rows = np.minimum(((np.arange(size_hw[0]) + 0.5) * h / size_hw[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size_hw[1]) + 0.5) * w / size_hw[1]).astype(np.int64), w - 1)
    return values[rows[:, None], cols[None, :]]


class AugmentationTestTransform:
    """Detectron2 augmentations (the shortest-edge resize of the segmentation mappers) applied to
    an ``(H, W, C)`` uint8 image exactly as :func:`~.inference.map_for_inference` applies them."""

    def __init__(self, augmentations: List[T.Augmentation]):
        self.augmentations = list(augmentations)

    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, InputGeometry]:
        aug_input = T.AugInput(image)
        T.AugmentationList(self.augmentations)(aug_input)
        out = aug_input.image
        resized_hw = (int(out.shape[0]), int(out.shape[1]))
        geometry = InputGeometry(
            original_hw=(int(image.shape[0]), int(image.shape[1])),
            resized_hw=resized_hw,
            crop_box=(0, 0, *resized_hw),
        )
        return out, geometry

    def __repr__(self) -> str:
        return f"AugmentationTestTransform({self.augmentations})"


class ResizeCenterCropTestTransform:
    """The classification mapper's test ops applied to an ``(H, W, C)`` uint8 image."""

    def __init__(self, test_resize: int, test_crop: int):
        self.test_crop = test_crop
        self.resize, self.center_crop = classification_test_ops(test_resize, test_crop)

    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, InputGeometry]:
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        resized = self.resize(chw)
        cropped = self.center_crop(resized)
        resized_hw = (int(resized.shape[-2]), int(resized.shape[-1]))
        # torchvision's centre crop rounds the offsets this way (and pads when the crop is larger).
        top = int(round((resized_hw[0] - self.test_crop) / 2.0))
        left = int(round((resized_hw[1] - self.test_crop) / 2.0))
        geometry = InputGeometry(
            original_hw=(int(image.shape[0]), int(image.shape[1])),
            resized_hw=resized_hw,
            crop_box=(top, left, self.test_crop, self.test_crop),
        )
        return np.ascontiguousarray(cropped.numpy().transpose(1, 2, 0)), geometry

    def __repr__(self) -> str:
        return f"ResizeCenterCropTestTransform({self.resize}, {self.center_crop})"


def build_test_transform(cfg: CfgNode):
    """The test-time transform of the mapper ``INPUT.DATASET_MAPPER_NAME`` names, for in-memory
    ``(H, W, C)`` uint8 images in ``INPUT.FORMAT``: ``transform(image) -> (model_input (H', W',
    C) uint8, InputGeometry)``."""
    if cfg.INPUT.DATASET_MAPPER_NAME == CLASSIFICATION_MAPPER_NAME:
        c = cfg.INPUT.CLASSIFICATION
        return ResizeCenterCropTestTransform(c.TEST_RESIZE, c.TEST_CROP)
    return AugmentationTestTransform(test_augmentations_from_config(cfg))
