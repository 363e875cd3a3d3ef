"""Augmentation recipes shared by the mappers, built from explicit arguments (no config access).

* :func:`build_lsj_augmentations` — large-scale jitter (COCO recipes of Mask2Former / kMaX).
* :func:`build_semantic_augmentations` — Mask2Former's ADE20K recipe.
* :func:`build_detr_augmentations` — DETR's multi-scale resize with a random crop half the time.
* :func:`build_test_augmentations` — the test-time shortest-edge resize of every mapper.
"""

from __future__ import annotations

from typing import List, Sequence

from detectron2.data import transforms as T

RANDOM_FLIP_CHOICES = ("none", "horizontal", "vertical")


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
