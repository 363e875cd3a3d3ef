"""COCO-format panoptic annotations (PNG + ``segments_info``) for the two panoptic mappers."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from detectron2.structures import Instances

from .augmented_sample import AugmentedSample
from .mapper_io import panoptic_rgb_to_ids, read_panoptic_png
from .targets import check_contiguous_category_id, instances_from_masks, pad_bottom_right


def check_segment_categories(
    segments_info: Iterable[dict], num_classes: int, annotation_file: str
) -> None:
    """Raise naming the file when a segment's ``category_id`` is not a contiguous id of the data set."""
    for segment in segments_info:
        check_contiguous_category_id(
            segment["category_id"],
            num_classes,
            f"Segment id {segment.get('id')} in {annotation_file!r}",
        )


def pop_panoptic_annotation(
    dataset_dict: Dict[str, Any],
    image_hw: Tuple[int, int],
    num_classes: Optional[int],
    mapper_name: str,
) -> Tuple[np.ndarray, List[dict]]:
    """Take the panoptic annotation of a training dict: ``(panoptic PNG as (H, W, 3) uint8 RGB,
    segments_info)``. ``pan_seg_file_name`` and ``sem_seg_file_name`` leave the dict (the label
    map, where needed, is derived from the panoptic PNG); ``segments_info`` stays.

    Raises ``KeyError`` naming the image and ``mapper_name`` when the dict is not panoptic, and
    the errors of :func:`read_panoptic_png` and :func:`check_segment_categories` (``num_classes``
    None: unchecked).
    """
    dataset_dict.pop("sem_seg_file_name", None)
    panoptic_file = dataset_dict.pop("pan_seg_file_name", None)
    if panoptic_file is None or "segments_info" not in dataset_dict:
        raise KeyError(
            f"Data set dict of {dataset_dict['file_name']!r} has no 'pan_seg_file_name' / "
            f"'segments_info'; {mapper_name} needs a panoptic data set"
        )
    segments_info = dataset_dict["segments_info"]
    panoptic_rgb = read_panoptic_png(panoptic_file, image_hw, dataset_dict["file_name"])
    if num_classes is not None:
        check_segment_categories(segments_info, num_classes, panoptic_file)
    return panoptic_rgb, segments_info


def panoptic_to_masks(
    segment_ids: np.ndarray, segments_info: Iterable[dict]
) -> Tuple[List[np.ndarray], List[int]]:
    """One mask per non-crowd segment of a ``(H, W)`` panoptic id map (things and stuff alike)."""
    masks, classes = [], []
    for segment in segments_info:
        if segment.get("iscrowd", 0):
            continue
        masks.append(segment_ids == segment["id"])
        classes.append(int(segment["category_id"]))
    return masks, classes


def panoptic_to_semantic(
    segment_ids: np.ndarray, segments_info: Iterable[dict], ignore_label: int
) -> np.ndarray:
    """``(H, W)`` label map of a panoptic id map: each segment's category (crowd segments
    included, as in the semantic PNGs prepared from panoptic ones), void = ``ignore_label``.

    uint8 when every value fits (Detectron2 then resizes it with PIL like the image), else
    float64 (Detectron2's resize of other dtypes goes through float torch interpolation).
    """
    segments_info = list(segments_info)
    largest = max([ignore_label] + [int(s["category_id"]) for s in segments_info])
    dtype = np.uint8 if 0 <= largest <= 255 else np.float64
    labels = np.full(segment_ids.shape, ignore_label, dtype=dtype)
    for segment in segments_info:
        labels[segment_ids == segment["id"]] = segment["category_id"]
    return labels


def panoptic_instances(
    panoptic_rgb: np.ndarray, segments_info: Iterable[dict], sample: AugmentedSample
) -> Instances:
    """Targets of a panoptic annotation: its ``(H, W, 3)`` PNG through the sample's transforms and
    padding, one mask per non-crowd segment (things and stuff), no mask on padding."""
    transformed = sample.transforms.apply_segmentation(panoptic_rgb)
    segment_ids = torch.from_numpy(panoptic_rgb_to_ids(transformed))
    segment_ids = pad_bottom_right(segment_ids, sample.pad_hw, -1)
    # The pad colour (255, 255, 255) could be a real segment id: clear padding explicitly.
    segment_ids[sample.padding_mask] = -1
    masks, classes = panoptic_to_masks(segment_ids.numpy(), segments_info)
    return instances_from_masks(masks, classes, sample.image_hw)
