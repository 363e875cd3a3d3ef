"""The test-time half shared by every segmentation / detection mapper: resize the image only.

Evaluators read the ground truth from the files named in the data set's metadata, so at test
time a mapper returns the image plus what the evaluators and the model's post-processing need
(``file_name``, ``image_id``, and the original ``height`` / ``width`` to resize predictions to).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .mapper_io import read_image_file

# Training annotations a test-time output does not carry (they can be large, e.g. polygons).
ANNOTATION_KEYS = ("annotations", "segments_info", "pan_seg_file_name", "sem_seg_file_name")


def image_to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` uint8 array -> ``(C, H, W)`` uint8 tensor (contiguous, for shared memory)."""
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def read_checked_image(dataset_dict: Dict[str, Any], image_format: Optional[str]) -> np.ndarray:
    """Read ``dataset_dict["file_name"]`` and check it against the dict's ``height`` / ``width``
    (Detectron2's ``check_image_size``, which also fills them in when absent)."""
    image = read_image_file(dataset_dict["file_name"], image_format)
    utils.check_image_size(dataset_dict, image)
    return image


def map_for_inference(
    dataset_dict: Dict[str, Any],
    image_format: Optional[str],
    augmentations: List[T.Augmentation],
) -> Dict[str, Any]:
    """Test-time mapping: ``{"image": (C, H', W') uint8, "height", "width", "file_name",
    "image_id", ...}`` where ``height`` / ``width`` stay the original image size and the keys in
    :data:`ANNOTATION_KEYS` are removed; other keys of the data set dict pass through.
    """
    dataset_dict = copy.deepcopy(
        {key: value for key, value in dataset_dict.items() if key not in ANNOTATION_KEYS}
    )
    image = read_checked_image(dataset_dict, image_format)
    aug_input = T.AugInput(image)
    T.AugmentationList(augmentations)(aug_input)
    dataset_dict["image"] = image_to_chw_tensor(aug_input.image)
    return dataset_dict
