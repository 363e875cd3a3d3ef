"""Apply a mapper's training augmentations to an image (and its label map), then pad.

Every segmentation / detection mapper goes through :func:`augment_and_pad` and returns its result
with :func:`add_training_outputs`, so the output keys, dtypes and the meaning of ``padding_mask``
are the same for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.structures import Instances

from .inference import image_to_chw_tensor
from .targets import pad_bottom_right, pad_to_divisibility


def valid_pixels_after(transforms: T.TransformList, image_hw: Tuple[int, int]) -> np.ndarray:
    """Boolean ``(H', W')`` map of output pixels that come from the input image (False = padding).

    A map of ones goes through the same transforms as the labels; padding transforms fill label
    maps with a value other than 1 (FixedSizeCrop uses 255), so it shows where padding went.
    """
    ones = np.ones(image_hw, dtype=np.uint8)
    return transforms.apply_segmentation(ones) == 1


@dataclass
class AugmentedSample:
    """An augmented, padded training image. ``H', W'`` is the size after the augmentations,
    ``H, W`` after the bottom/right padding to ``size_divisibility`` (equal when it is off).

    Attributes:
        image: ``(C, H, W)`` uint8, padding 0.
        sem_seg: ``(H, W)`` int64 label map (``ignore_label`` on void and padding), or None when
            no label map was augmented.
        padding_mask: ``(H, W)`` bool, True on pixels that do not come from the input image.
        valid: ``(H', W')`` bool numpy array, True on augmented pixels from the input image.
        transforms: the transforms applied, to apply to the annotations as well.
        pad_hw: the bottom/right padding ``(pad_h, pad_w)`` added after them.
    """

    image: torch.Tensor
    sem_seg: Optional[torch.Tensor]
    padding_mask: torch.Tensor
    valid: np.ndarray
    transforms: T.TransformList
    pad_hw: Tuple[int, int]

    @property
    def image_hw(self) -> Tuple[int, int]:
        """``(H, W)``: the size of the padded image, which the targets share."""
        return tuple(self.image.shape[-2:])


def augment_and_pad(
    image: np.ndarray,
    augmentations: List[T.Augmentation],
    labels: Optional[np.ndarray] = None,
    ignore_label: int = 255,
    size_divisibility: int = 0,
) -> AugmentedSample:
    """Augment an ``(H, W, C)`` uint8 image, with its ``(H, W)`` label map when given (the
    augmentations may need it, e.g. the category-area crop), then pad both at the bottom/right to
    a multiple of ``size_divisibility`` (<= 0: no padding) with 0 / ``ignore_label``."""
    original_hw = image.shape[:2]
    aug_input = T.AugInput(image, sem_seg=labels)
    transforms = T.AugmentationList(augmentations)(aug_input)
    valid = valid_pixels_after(transforms, original_hw)

    image_tensor = image_to_chw_tensor(aug_input.image)
    pad_hw = pad_to_divisibility(size_divisibility, image_tensor.shape[-2:])
    sem_seg = None
    if labels is not None:
        sem_seg_array = aug_input.sem_seg.astype(np.int64)
        sem_seg_array[~valid] = ignore_label
        sem_seg = pad_bottom_right(torch.from_numpy(sem_seg_array), pad_hw, ignore_label)
    return AugmentedSample(
        image=pad_bottom_right(image_tensor, pad_hw, 0),
        sem_seg=sem_seg,
        padding_mask=pad_bottom_right(torch.from_numpy(np.ascontiguousarray(~valid)), pad_hw, True),
        valid=valid,
        transforms=transforms,
        pad_hw=pad_hw,
    )


def add_training_outputs(
    dataset_dict: Dict[str, Any], sample: AugmentedSample, instances: Instances
) -> Dict[str, Any]:
    """Set ``image``, ``sem_seg`` (when the sample has one), ``padding_mask`` and ``instances`` in
    ``dataset_dict`` and return it."""
    dataset_dict["image"] = sample.image
    if sample.sem_seg is not None:
        dataset_dict["sem_seg"] = sample.sem_seg
    dataset_dict["padding_mask"] = sample.padding_mask
    dataset_dict["instances"] = instances
    return dataset_dict
