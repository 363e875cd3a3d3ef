"""What every dataset mapper shares: the registry, the base class, training's augment-and-pad
step, and the whole test-time mapping.

A mapper (``lsj.py``, ``mask_former.py``, ``detr.py``) subclasses :class:`DatasetMapperBase`,
names its training augmentations and options in :meth:`~DatasetMapperBase.training_arguments`
and builds its targets in :meth:`~DatasetMapperBase.map_for_training`. The base class does the
rest: copying the data set dict, reading the image checked against its size, and at test time
the same shortest-edge resize for every mapper (:func:`map_for_inference`), which the predictor
applies to in-memory images through :func:`build_test_transform`.

Configs select a mapper by its registered name, ``INPUT.DATASET_MAPPER_NAME`` (the short strings
of Mask2Former's configs: ``coco_panoptic_lsj``, ``mask_former_semantic``, ...).
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.structures import Instances

from ..image_io import read_image_file
from .augmentations import classification_test_ops, test_augmentations_from_config

# ---- registry -----------------------------------------------------------------------------

# The registry maps config names to classes itself: the names are not class names.
DATASET_MAPPER_REGISTRY: Dict[str, Type] = {}

# INPUT.DATASET_MAPPER_NAME of the classification mapper (resize + centre crop at test time).
CLASSIFICATION_MAPPER_NAME = "classification"


def register_mapper(name: str) -> Callable[[Type], Type]:
    """Class decorator: register a mapper class (constructor ``(cfg, is_train)``) under ``name``."""

    def decorator(mapper_cls: Type) -> Type:
        if name in DATASET_MAPPER_REGISTRY:
            raise KeyError(
                f"Dataset mapper {name!r} is already registered "
                f"({DATASET_MAPPER_REGISTRY[name].__qualname__})"
            )
        DATASET_MAPPER_REGISTRY[name] = mapper_cls
        return mapper_cls

    return decorator


def build_dataset_mapper(cfg: CfgNode, is_train: bool) -> Callable[[dict], dict]:
    """Build the mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME`` for training or testing."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPER_REGISTRY:
        known = ", ".join(sorted(DATASET_MAPPER_REGISTRY))
        raise KeyError(
            f"INPUT.DATASET_MAPPER_NAME={name!r} is not a registered mapper; known: {known}"
        )
    return DATASET_MAPPER_REGISTRY[name](cfg, is_train)


def class_list_key(cfg: CfgNode) -> str:
    """The metadata class list whose indices are the class ids of ``INPUT.DATASET_MAPPER_NAME``'s
    mapper (its ``CLASS_LIST_KEY``: ``stuff_classes`` or ``thing_classes``)."""
    mapper = DATASET_MAPPER_REGISTRY.get(cfg.INPUT.DATASET_MAPPER_NAME)
    return getattr(mapper, "CLASS_LIST_KEY", "stuff_classes")


# ---- the training data set (Mask2Former reads these from DATASETS.TRAIN[0]'s metadata) ------


def training_metadata(cfg: CfgNode) -> Metadata:
    """Metadata of the first training data set (an empty ``Metadata`` when there is none)."""
    if not cfg.DATASETS.TRAIN:
        return Metadata()
    return MetadataCatalog.get(cfg.DATASETS.TRAIN[0])


def num_classes_for_training(cfg: CfgNode, class_list_key: str) -> int:
    """Number of contiguous class ids: ``len(metadata.<class_list_key>)`` of the first training
    data set (``stuff_classes`` lists every class of a panoptic / semantic data set,
    ``thing_classes`` those of an instance / detection one), else ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``.
    """
    classes = training_metadata(cfg).get(class_list_key, None)
    return len(classes) if classes else int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)


def ignore_label_for_training(cfg: CfgNode) -> int:
    """The training data set's ``ignore_label``; it must agree with ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``
    when both are set, since the loss ignores one value and the labels would carry the other."""
    config_value = int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
    metadata = training_metadata(cfg)
    dataset_value = metadata.get("ignore_label", None)
    if dataset_value is None:
        return config_value
    if int(dataset_value) != config_value:
        raise ValueError(
            f"Data set {cfg.DATASETS.TRAIN[0]!r} has ignore_label={dataset_value}, but "
            f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE={config_value}; set them to the same value"
        )
    return int(dataset_value)


# ---- image arrays and tensors -------------------------------------------------------------


def image_to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` uint8 array -> ``(C, H, W)`` uint8 tensor (contiguous, for shared memory)."""
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def read_checked_image(dataset_dict: Dict[str, Any], image_format: Optional[str]) -> np.ndarray:
    """Read ``dataset_dict["file_name"]`` as ``(H, W, C)`` uint8 and check it against the dict's
    ``height`` / ``width`` (Detectron2's ``check_image_size``, which fills them in when absent)."""
    image = read_image_file(dataset_dict["file_name"], image_format)
    utils.check_image_size(dataset_dict, image)
    return image


def pad_to_divisibility(size_divisibility: int, hw: Tuple[int, int]) -> Tuple[int, int]:
    """Bottom/right padding ``(pad_h, pad_w)`` that makes ``hw`` a multiple of ``size_divisibility``."""
    if size_divisibility <= 0:
        return 0, 0
    height, width = hw
    return (-height) % size_divisibility, (-width) % size_divisibility


def pad_bottom_right(tensor: torch.Tensor, pad_hw: Tuple[int, int], value: float) -> torch.Tensor:
    """Pad the last two dims of ``tensor`` (``(..., H, W)`` -> ``(..., H + pad_h, W + pad_w)``)
    at the bottom and right with ``value``."""
    pad_h, pad_w = pad_hw
    if pad_h == 0 and pad_w == 0:
        return tensor
    return F.pad(tensor, (0, pad_w, 0, pad_h), value=value).contiguous()


# ---- test time ----------------------------------------------------------------------------
# Evaluators read the ground truth from the files named in the data set's metadata, so at test
# time a mapper returns the image plus what the evaluators and the model's post-processing need.

# Training annotations a test-time output does not carry (they can be large, e.g. polygons).
ANNOTATION_KEYS = ("annotations", "segments_info", "pan_seg_file_name", "sem_seg_file_name")


def apply_test_augmentations(image: np.ndarray, augmentations: List[T.Augmentation]) -> np.ndarray:
    """The test-time resize of every segmentation / detection mapper and of the predictor:
    ``(H, W, C)`` uint8 -> ``(H', W', C)`` uint8 through ``augmentations`` (image only)."""
    aug_input = T.AugInput(image)
    T.AugmentationList(augmentations)(aug_input)
    return aug_input.image


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
    dataset_dict["image"] = image_to_chw_tensor(apply_test_augmentations(image, augmentations))
    return dataset_dict


@dataclass(frozen=True)
class InputGeometry:
    """Where the model input lies in the original image (the cluster visualisation draws
    stride-s maps over the original picture with it).

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
    """The segmentation / detection mappers' test-time resize for an in-memory ``(H, W, C)``
    uint8 image: ``transform(image) -> ((H', W', C) uint8, InputGeometry)``."""

    def __init__(self, augmentations: List[T.Augmentation]):
        self.augmentations = list(augmentations)

    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, InputGeometry]:
        out = apply_test_augmentations(image, self.augmentations)
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
    """The classification mapper's test ops for an in-memory ``(H, W, C)`` uint8 image:
    ``transform(image) -> ((test_crop, test_crop, C) uint8, InputGeometry)``."""

    def __init__(self, test_resize: int, test_crop: int):
        self.test_crop = test_crop
        self.resize, self.center_crop = classification_test_ops(test_resize, test_crop)

    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, InputGeometry]:
        resized = self.resize(image_to_chw_tensor(image))
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


def build_test_transform(cfg: CfgNode) -> Callable[[np.ndarray], Tuple[np.ndarray, InputGeometry]]:
    """The test-time transform of the mapper ``INPUT.DATASET_MAPPER_NAME`` names, for in-memory
    ``(H, W, C)`` uint8 images in ``INPUT.FORMAT``: ``transform(image) -> (model_input (H', W',
    C) uint8, InputGeometry)``."""
    if cfg.INPUT.DATASET_MAPPER_NAME == CLASSIFICATION_MAPPER_NAME:
        c = cfg.INPUT.CLASSIFICATION
        return ResizeCenterCropTestTransform(c.TEST_RESIZE, c.TEST_CROP)
    return AugmentationTestTransform(test_augmentations_from_config(cfg))


# ---- training: augment, pad, mark the padding ---------------------------------------------


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
    """Set ``image`` ``(C, H, W)``, ``sem_seg`` ``(H, W)`` (when the sample has one),
    ``padding_mask`` ``(H, W)`` and ``instances`` in ``dataset_dict`` and return it, so every
    mapper returns the same keys, dtypes and meaning of ``padding_mask``."""
    dataset_dict["image"] = sample.image
    if sample.sem_seg is not None:
        dataset_dict["sem_seg"] = sample.sem_seg
    dataset_dict["padding_mask"] = sample.padding_mask
    dataset_dict["instances"] = instances
    return dataset_dict


# ---- the base class -----------------------------------------------------------------------


class DatasetMapperBase(ABC):
    """Callable ``dataset_dict -> model input`` for training (``is_train=True``) or testing.

    Testing: :func:`map_for_inference` with ``augmentations`` (built by :meth:`from_config` as
    ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``).
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
        return {
            "is_train": True,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": num_classes_for_training(cfg, cls.CLASS_LIST_KEY),
            **cls.training_arguments(cfg),
        }

    @classmethod
    @abstractmethod
    def training_arguments(cls, cfg: CfgNode) -> Dict[str, Any]:
        """Constructor arguments for training besides ``is_train``, ``image_format`` and
        ``num_classes`` (:func:`num_classes_for_training` of ``CLASS_LIST_KEY``): at least
        ``augmentations``."""

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
