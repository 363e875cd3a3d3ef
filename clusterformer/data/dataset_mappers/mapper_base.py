"""The skeleton every segmentation / detection mapper shares; each mapper adds only its recipe.

A mapper subclass names its training augmentations and options in :meth:`training_arguments` and
builds its targets in :meth:`map_for_training`. The base class does the rest: the test-time
arguments (the same shortest-edge resize for every mapper), test-time mapping (image only), and,
for training, copying the data set dict and reading the image checked against its size.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional

import numpy as np
from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T

from .inference import map_for_inference, read_checked_image
from .inference_transform import test_augmentations_from_config


class DatasetMapperBase(ABC):
    """Callable ``dataset_dict -> model input`` for training (``is_train=True``) or testing.

    Testing: :func:`~.inference.map_for_inference` with ``augmentations`` (built by
    :meth:`from_config` as ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``).
    Training: ``map_for_training(deep copy of the dict, (H, W, C) uint8 image)``.

    ``CLASS_LIST_KEY``: the metadata list whose indices are the mapper's class ids
    (``stuff_classes``: every class of a panoptic / semantic data set in Mask2Former's convention;
    ``thing_classes``: those of an instance / detection data set).
    """

    CLASS_LIST_KEY = "stuff_classes"

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        num_classes: Optional[int] = None,
    ):
        """
        Args:
            augmentations: applied in order to the image and its annotations.
            image_format: channel order of the returned image ("BGR", "RGB").
            num_classes: annotations need ``0 <= category_id < num_classes`` (None: unchecked).
        """
        self.is_train = is_train
        self.augmentations = augmentations
        self.image_format = image_format
        self.num_classes = num_classes
        mode = "training" if is_train else "inference"
        # The subclass's module logger, so the log says which mapper file is at work.
        logging.getLogger(type(self).__module__).info(
            f"[{type(self).__name__}] augmentations for {mode}: {augmentations}"
        )

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict[str, Any]:
        if not is_train:
            return {
                "is_train": False,
                "augmentations": test_augmentations_from_config(cfg),
                "image_format": cfg.INPUT.FORMAT,
            }
        return {"is_train": True, "image_format": cfg.INPUT.FORMAT, **cls.training_arguments(cfg)}

    @classmethod
    @abstractmethod
    def training_arguments(cls, cfg: CfgNode) -> Dict[str, Any]:
        """Constructor arguments for training besides ``is_train`` and ``image_format``: at least
        ``augmentations``, usually ``num_classes``."""

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        if not self.is_train:
            return map_for_inference(dataset_dict, self.image_format, self.augmentations)
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_checked_image(dataset_dict, self.image_format)
        return self.map_for_training(dataset_dict, image)

    @abstractmethod
    def map_for_training(self, dataset_dict: Dict[str, Any], image: np.ndarray) -> Dict[str, Any]:
        """Augment ``image`` ``(H, W, C)`` with the annotations of ``dataset_dict`` (a copy the
        method may change) and return the dict with the training outputs added."""
