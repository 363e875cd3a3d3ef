"""Every augmentation recipe of the mappers: ``build_*`` from explicit arguments, and
``*_from_config`` from the ``INPUT.*`` config keys.

* :func:`build_lsj_augmentations` — large-scale jitter (COCO recipes of Mask2Former / kMaX;
  ``coco_panoptic_lsj``, ``coco_instance_lsj``, ``detr_detection`` with ``lsj``).
* :func:`build_semantic_augmentations` — Mask2Former's ADE20K recipe (``mask_former_*``).
* :func:`build_detr_augmentations` — DETR's multi-scale resize with a random crop half the time.
* :func:`build_test_augmentations` — the test-time shortest-edge resize of every segmentation /
  detection mapper (and of the predictor).
* :func:`build_classification_train_ops` / :func:`classification_test_ops` /
  :func:`random_erase_` — the ImageNet recipe of the classification mapper (torchvision ops on
  ``(C, H, W)`` uint8 tensors).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from torchvision.transforms import v2 as tv_transforms

RANDOM_FLIP_CHOICES = ("none", "horizontal", "vertical")
DETECTION_AUGMENTATIONS = ("detr", "lsj")


def at_least_one_pixel(transform: T.Transform) -> T.Transform:
    """A ``ResizeTransform`` to a 0-pixel side becomes one to 1 pixel; others pass unchanged.

    Resizing an extreme aspect ratio (e.g. 3 x 3000 to a longest side of 160) rounds the short
    side to 0, and PIL then fails with "height and width must be > 0", naming no file. A 1-pixel
    strip is a poor but valid input, and test-time predictions are resized back to the original
    size, so every image still gets one.
    """
    if isinstance(transform, T.ResizeTransform) and min(transform.new_h, transform.new_w) < 1:
        return T.ResizeTransform(
            transform.h,
            transform.w,
            max(transform.new_h, 1),
            max(transform.new_w, 1),
            transform.interp,
        )
    return transform


class _AtLeastOnePixel:
    """Mixin for Detectron2 resize augmentations: no output side shorter than 1 pixel."""

    def get_transform(self, image):
        return at_least_one_pixel(super().get_transform(image))


class ResizeShortestEdge(_AtLeastOnePixel, T.ResizeShortestEdge):
    """Detectron2's ``ResizeShortestEdge`` that never resizes a side to 0 pixels."""


class ResizeScale(_AtLeastOnePixel, T.ResizeScale):
    """Detectron2's ``ResizeScale`` that never resizes a side to 0 pixels."""


def build_random_flip(random_flip: str) -> List[T.Augmentation]:
    """``INPUT.RANDOM_FLIP`` ("none", "horizontal", "vertical") -> ``[]`` or ``[RandomFlip]``."""
    if random_flip not in RANDOM_FLIP_CHOICES:
        raise ValueError(
            f"INPUT.RANDOM_FLIP={random_flip!r}; expected one of {RANDOM_FLIP_CHOICES}"
        )
    if random_flip == "none":
        return []
    return [
        T.RandomFlip(horizontal=random_flip == "horizontal", vertical=random_flip == "vertical")
    ]


def build_lsj_augmentations(
    image_size: int,
    min_scale: float,
    max_scale: float,
    random_flip: str = "horizontal",
    image_pad_value: float = 128.0,
) -> List[T.Augmentation]:
    """Large-scale jitter: flip, resize to fit ``image_size * U(min_scale, max_scale)``, then crop
    (when larger) or pad at the bottom/right (when smaller) to exactly ``image_size`` squared.

    The padded area gets ``image_pad_value`` in the image (Detectron2's FixedSizeCrop default, as
    Mask2Former) and 255 in segmentation maps; mappers mark it in a ``padding_mask``.
    """
    if not 0 < min_scale <= max_scale:
        raise ValueError(
            f"LSJ needs 0 < INPUT.MIN_SCALE <= INPUT.MAX_SCALE, got {min_scale}, {max_scale}"
        )
    return [
        *build_random_flip(random_flip),
        ResizeScale(
            min_scale=min_scale,
            max_scale=max_scale,
            target_height=image_size,
            target_width=image_size,
        ),
        T.FixedSizeCrop(crop_size=(image_size, image_size), pad_value=image_pad_value),
    ]


def build_semantic_augmentations(
    min_size_train: Sequence[int],
    max_size_train: int,
    min_size_train_sampling: str,
    crop_enabled: bool,
    crop_type: str,
    crop_size: Sequence[float],
    single_category_max_area: float,
    ignore_label: int,
    color_aug_ssd: bool,
    image_format: str,
    random_flip: str = "horizontal",
) -> List[T.Augmentation]:
    """Mask2Former's semantic recipe: shortest-edge resize -> random crop in which no category
    covers more than ``single_category_max_area`` of the labelled pixels -> optional SSD colour
    jitter -> flip. The crop needs the label map, so apply it to ``AugInput(image, sem_seg=...)``.
    """
    augmentations: List[T.Augmentation] = [
        ResizeShortestEdge(min_size_train, max_size_train, min_size_train_sampling)
    ]
    if crop_enabled:
        augmentations.append(
            T.RandomCrop_CategoryAreaConstraint(
                crop_type, crop_size, single_category_max_area, ignore_label
            )
        )
    if color_aug_ssd:
        # Detectron2 ships it with PointRend (pip wheels and source installs both carry it).
        from detectron2.projects.point_rend import ColorAugSSDTransform

        augmentations.append(ColorAugSSDTransform(img_format=image_format))
    augmentations.extend(build_random_flip(random_flip))
    return augmentations


def build_detr_augmentations(
    min_size_train: Sequence[int],
    max_size_train: int,
    crop_enabled: bool,
    crop_type: str,
    crop_size: Sequence[float],
    pre_crop_min_sizes: Sequence[int],
    crop_probability: float = 0.5,
    random_flip: str = "horizontal",
) -> List[T.Augmentation]:
    """DETR / DINO multi-scale training: flip; with probability ``crop_probability`` resize the
    short side to one of ``pre_crop_min_sizes`` and take a random crop; then resize the short side
    to one of ``min_size_train`` (long side at most ``max_size_train``).
    """
    augmentations: List[T.Augmentation] = list(build_random_flip(random_flip))
    if crop_enabled:
        resize_then_crop = T.AugmentationList(
            [
                ResizeShortestEdge(pre_crop_min_sizes, sample_style="choice"),
                T.RandomCrop(crop_type, crop_size),
            ]
        )
        augmentations.append(T.RandomApply(resize_then_crop, prob=crop_probability))
    augmentations.append(ResizeShortestEdge(min_size_train, max_size_train, sample_style="choice"))
    return augmentations


def build_test_augmentations(min_size_test: int, max_size_test: int) -> List[T.Augmentation]:
    """The one test-time transform: resize the short side to ``min_size_test`` (0 disables it)."""
    if min_size_test <= 0:
        return []
    return [ResizeShortestEdge(min_size_test, max_size_test)]


# ---- from the config ----------------------------------------------------------------------


def lsj_augmentations_from_config(cfg: CfgNode) -> List[T.Augmentation]:
    """Large-scale jitter to ``INPUT.IMAGE_SIZE`` squared, scale in ``[MIN_SCALE, MAX_SCALE]``."""
    return build_lsj_augmentations(
        cfg.INPUT.IMAGE_SIZE, cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE, cfg.INPUT.RANDOM_FLIP
    )


def semantic_augmentations_from_config(cfg: CfgNode, ignore_label: int) -> List[T.Augmentation]:
    """Mask2Former's semantic recipe: ``MIN_SIZE_TRAIN`` resize, ``CROP`` with the category-area
    constraint (``ignore_label`` pixels do not count), optional ``COLOR_AUG_SSD``, flip."""
    return build_semantic_augmentations(
        min_size_train=cfg.INPUT.MIN_SIZE_TRAIN,
        max_size_train=cfg.INPUT.MAX_SIZE_TRAIN,
        min_size_train_sampling=cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
        crop_enabled=cfg.INPUT.CROP.ENABLED,
        crop_type=cfg.INPUT.CROP.TYPE,
        crop_size=cfg.INPUT.CROP.SIZE,
        single_category_max_area=cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
        ignore_label=ignore_label,
        color_aug_ssd=cfg.INPUT.COLOR_AUG_SSD,
        image_format=cfg.INPUT.FORMAT,
        random_flip=cfg.INPUT.RANDOM_FLIP,
    )


def detection_augmentations_from_config(cfg: CfgNode) -> List[T.Augmentation]:
    """``INPUT.DETECTION_AUGMENTATION``: "detr" (multi-scale, DINO's COCO recipe) or "lsj"."""
    recipe = cfg.INPUT.DETECTION_AUGMENTATION
    if recipe == "detr":
        return build_detr_augmentations(
            min_size_train=cfg.INPUT.MIN_SIZE_TRAIN,
            max_size_train=cfg.INPUT.MAX_SIZE_TRAIN,
            crop_enabled=cfg.INPUT.CROP.ENABLED,
            crop_type=cfg.INPUT.CROP.TYPE,
            crop_size=cfg.INPUT.CROP.SIZE,
            pre_crop_min_sizes=cfg.INPUT.DETR_PRE_CROP_MIN_SIZES,
            crop_probability=cfg.INPUT.DETR_CROP_PROBABILITY,
            random_flip=cfg.INPUT.RANDOM_FLIP,
        )
    if recipe == "lsj":
        return lsj_augmentations_from_config(cfg)
    raise ValueError(
        f"INPUT.DETECTION_AUGMENTATION={recipe!r}; expected one of {DETECTION_AUGMENTATIONS}"
    )


def test_augmentations_from_config(cfg: CfgNode) -> List[T.Augmentation]:
    """The test-time augmentations of the segmentation / detection mappers (shortest-edge resize
    to ``INPUT.MIN_SIZE_TEST``, the long side capped at ``INPUT.MAX_SIZE_TEST``)."""
    return build_test_augmentations(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)


# ---- classification (torchvision ops on (C, H, W) uint8 tensors) --------------------------


def build_classification_train_ops(
    train_crop: int,
    crop_scale: Sequence[float],
    horizontal_flip: bool,
    rand_augment_magnitude: Optional[int],
) -> List[torch.nn.Module]:
    """RandomResizedCrop(``train_crop``, ``crop_scale``) -> optional horizontal flip -> optional
    RandAugment (2 ops, ``rand_augment_magnitude``; None: off)."""
    ops = [tv_transforms.RandomResizedCrop(train_crop, scale=tuple(crop_scale), antialias=True)]
    if horizontal_flip:
        ops.append(tv_transforms.RandomHorizontalFlip())
    if rand_augment_magnitude is not None:
        ops.append(tv_transforms.RandAugment(num_ops=2, magnitude=rand_augment_magnitude))
    return ops


def classification_test_ops(test_resize: int, test_crop: int) -> List[torch.nn.Module]:
    """The classification mapper's test ops on ``(C, H, W)`` uint8 tensors: short side to
    ``test_resize`` (antialiased), then a ``test_crop`` square centre crop."""
    return [tv_transforms.Resize(test_resize, antialias=True), tv_transforms.CenterCrop(test_crop)]


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
