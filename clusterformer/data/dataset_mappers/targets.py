"""Annotations -> training targets: instance (COCO ``annotations``), semantic (label PNG) and
panoptic (PNG + ``segments_info``) annotations through a sample's augmentation.

Every segmentation mapper returns the same target schema, ``Instances`` of the (padded) image
size with

* ``gt_classes``: ``(N,)`` int64 contiguous class ids,
* ``gt_masks``: :class:`BitMasks` over a ``(N, H, W)`` bool tensor (``.tensor`` for the raw masks),
* ``gt_boxes``: :class:`Boxes` ``(N, 4)`` float32, absolute XYXY, the tight box of each mask.

Masks that are empty after augmentation (a segment cropped away) are dropped: an empty target
mask only teaches a query to predict a class with nothing to segment.

Instance segmentations (polygons or RLE) are decoded to binary masks at the original image size
(:func:`~clusterformer.data.datasets.mask_encoding.coco_segmentation_to_mask`) and then
transformed like a label map: transforming polygons instead would need shapely for crops (which
Detectron2 does not require), and the mask route treats polygons and RLE the same way.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.structures import BitMasks, BoxMode, Instances
from panopticapi.utils import rgb2id

from ..datasets.mask_encoding import coco_segmentation_to_mask
from ..image_io import read_image_file
from .base import AugmentedSample, pad_bottom_right


def instances_from_masks(
    masks: Sequence[np.ndarray], classes: Sequence[int], image_hw: Tuple[int, int]
) -> Instances:
    """Build target ``Instances`` from ``N`` boolean ``(H, W)`` masks and their class ids.

    Empty masks are dropped; boxes are the tight XYXY boxes of the masks (x1/y1 exclusive).
    """
    height, width = image_hw
    kept_masks: List[np.ndarray] = []
    kept_classes: List[int] = []
    for mask, class_id in zip(masks, classes):
        if mask.shape != (height, width):
            raise ValueError(f"mask of shape {mask.shape} for an image of size {(height, width)}")
        if mask.any():
            kept_masks.append(mask)
            kept_classes.append(int(class_id))
    instances = Instances((height, width))
    instances.gt_classes = torch.tensor(kept_classes, dtype=torch.int64)
    if kept_masks:
        mask_tensor = torch.from_numpy(np.ascontiguousarray(np.stack(kept_masks)).astype(bool))
    else:
        mask_tensor = torch.zeros((0, height, width), dtype=torch.bool)
    bit_masks = BitMasks(mask_tensor)
    instances.gt_masks = bit_masks
    instances.gt_boxes = bit_masks.get_bounding_boxes()
    return instances


def semantic_to_masks(sem_seg: np.ndarray, ignore_label: int) -> Tuple[List[np.ndarray], List[int]]:
    """One mask per class present in the ``(H, W)`` label map (``ignore_label`` excluded)."""
    classes = [int(c) for c in np.unique(sem_seg) if c != ignore_label]
    return [sem_seg == c for c in classes], classes


def check_contiguous_category_id(category_id: Any, num_classes: int, owner: str) -> None:
    """Raise ``ValueError`` ("<owner> has unknown category id ...") unless ``category_id`` is an
    integer in ``[0, num_classes)``; ``owner`` names the annotation and its file."""
    if not isinstance(category_id, (int, np.integer)) or not 0 <= category_id < num_classes:
        raise ValueError(
            f"{owner} has unknown category id {category_id!r}; "
            f"expected a contiguous id in [0, {num_classes})"
        )


def check_semantic_labels(
    labels: np.ndarray, num_classes: int, ignore_label: int, file_name: str
) -> None:
    """Raise if a label map holds values that are neither a class id nor ``ignore_label``."""
    values = np.unique(labels)
    bad = [v for v in values.tolist() if v != ignore_label and not 0 <= v < num_classes]
    if bad:
        raise ValueError(
            f"Semantic annotation {file_name!r} contains label values {bad[:10]} outside "
            f"[0, {num_classes}) and different from the ignore label {ignore_label}"
        )


# ---- instance annotations (COCO ``annotations``) -------------------------------------------


def non_crowd_annotations(annotations: Sequence[dict]) -> List[dict]:
    """Annotations without ``iscrowd`` set (crowd regions are not training targets)."""
    return [a for a in annotations if not a.get("iscrowd", 0)]


def check_annotation_categories(
    annotations: Sequence[dict], num_classes: int, file_name: str
) -> None:
    """Raise naming the image file when an annotation's contiguous ``category_id`` is unknown."""
    for index, annotation in enumerate(annotations):
        check_contiguous_category_id(
            annotation["category_id"], num_classes, f"Annotation #{index} of {file_name!r}"
        )


def pop_instance_annotations(
    dataset_dict: Dict[str, Any], num_classes: Optional[int]
) -> List[dict]:
    """Take ``annotations`` out of a training dict: the non-crowd ones, their categories checked
    against ``num_classes`` (None: unchecked)."""
    annotations = non_crowd_annotations(dataset_dict.pop("annotations", []))
    if num_classes is not None:
        check_annotation_categories(annotations, num_classes, dataset_dict["file_name"])
    return annotations


def annotation_classes(annotations: Sequence[dict]) -> List[int]:
    """The contiguous ``category_id`` of each annotation."""
    return [int(a["category_id"]) for a in annotations]


def transform_annotation_masks(
    annotations: Sequence[dict],
    transforms: T.TransformList,
    original_hw: Tuple[int, int],
    valid: np.ndarray,
    file_name: str,
) -> List[np.ndarray]:
    """Decode each annotation's ``segmentation`` and transform it: list of ``(H', W')`` bool masks,
    with padded pixels (``valid`` False) cleared."""
    height, width = original_hw
    masks = []
    for index, annotation in enumerate(annotations):
        if "segmentation" not in annotation:
            raise KeyError(f"Annotation #{index} of {file_name!r} has no 'segmentation'")
        mask = coco_segmentation_to_mask(
            annotation["segmentation"], height, width, file_name, index
        )
        # uint8 so that Detectron2 resizes it with PIL nearest-neighbour, as it does label maps.
        transformed = transforms.apply_segmentation(mask.astype(np.uint8)) == 1
        masks.append(transformed & valid)
    return masks


def annotation_box_xyxy(annotation: dict, file_name: str, index: int) -> List[float]:
    """An annotation's ``bbox`` (in its ``bbox_mode``) as absolute XYXY, checked.

    Raises ``KeyError`` / ``ValueError`` naming the image file and the annotation index when the
    box is missing, not 4 finite numbers, or has a negative width or height: a transform would
    silently turn such a box into a valid-looking one (``apply_box`` takes corner minima and
    maxima). Boxes of zero width or height pass; the mapper drops them after augmentation.
    """
    if "bbox" not in annotation or "bbox_mode" not in annotation:
        raise KeyError(f"Annotation #{index} of {file_name!r} needs 'bbox' and 'bbox_mode'")
    box = np.asarray(annotation["bbox"], dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.isfinite(box).all():
        raise ValueError(
            f"Annotation #{index} of {file_name!r} has bbox {annotation['bbox']!r}; expected 4 "
            "finite numbers"
        )
    x0, y0, x1, y1 = BoxMode.convert(box.tolist(), annotation["bbox_mode"], BoxMode.XYXY_ABS)
    if x1 < x0 or y1 < y0:
        raise ValueError(
            f"Annotation #{index} of {file_name!r} has bbox {annotation['bbox']!r} "
            f"({BoxMode(annotation['bbox_mode']).name}) with a negative width or height"
        )
    return [x0, y0, x1, y1]


def transform_annotation_boxes(
    annotations: Sequence[dict],
    transforms: T.TransformList,
    image_hw: Tuple[int, int],
    file_name: str,
) -> np.ndarray:
    """``(N, 4)`` float32 absolute XYXY boxes: each annotation's ``bbox`` (in its ``bbox_mode``,
    checked by :func:`annotation_box_xyxy`) transformed and clipped to the output image. A box
    outside the image is clipped to zero area (the mapper then drops it)."""
    if not annotations:
        return np.zeros((0, 4), dtype=np.float32)
    boxes = np.asarray(
        [annotation_box_xyxy(a, file_name, index) for index, a in enumerate(annotations)],
        dtype=np.float64,
    )
    boxes = transforms.apply_box(boxes)
    height, width = image_hw
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes.astype(np.float32)


# ---- annotation PNGs ----------------------------------------------------------------------


def check_same_size(
    annotation: np.ndarray, annotation_file: str, image_hw: Tuple[int, int], image_file: str
) -> None:
    """Raise ``SizeMismatchError`` naming both files when an annotation PNG's size is not the image's."""
    annotation_hw = tuple(annotation.shape[:2])
    if annotation_hw != tuple(image_hw):
        raise SizeMismatchError(
            f"Annotation {annotation_file!r} has size (H, W)={annotation_hw}, but its image "
            f"{image_file!r} has size {tuple(image_hw)}; the annotation must match its image"
        )


def read_semantic_png(file_name: str, image_hw: Tuple[int, int], image_file: str) -> np.ndarray:
    """Read a semantic label PNG as ``(H, W)`` integer labels and check it matches the image.

    8-bit labels stay uint8 (so Detectron2 resizes them with PIL, like the image); wider ones are
    returned as float64, which Detectron2's transforms resize with nearest-neighbour torch ops.
    """
    labels = read_image_file(file_name, None, role="semantic annotation")
    if labels.ndim == 3:
        if labels.shape[2] != 1:
            raise ValueError(
                f"Semantic annotation {file_name!r} has {labels.shape[2]} channels; "
                "expected a single-channel label PNG"
            )
        labels = labels[:, :, 0]
    check_same_size(labels, file_name, image_hw, image_file)
    if labels.dtype != np.uint8:
        labels = labels.astype(np.float64)
    return labels


def read_panoptic_png(file_name: str, image_hw: Tuple[int, int], image_file: str) -> np.ndarray:
    """Read a COCO-format panoptic PNG as ``(H, W, 3)`` uint8 RGB and check it matches the image."""
    panoptic_rgb = read_image_file(file_name, "RGB", role="panoptic annotation")
    check_same_size(panoptic_rgb, file_name, image_hw, image_file)
    return panoptic_rgb


# ---- panoptic annotations (COCO-format PNG + ``segments_info``) ----------------------------


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
    """``(H, W)`` label map of a ``(H, W)`` panoptic id map: each segment's category (crowd
    segments included, as in the semantic PNGs prepared from panoptic ones), void =
    ``ignore_label``.

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
    segment_ids = torch.from_numpy(rgb2id(transformed))
    segment_ids = pad_bottom_right(segment_ids, sample.pad_hw, -1)
    # The pad colour (255, 255, 255) could be a real segment id: clear padding explicitly.
    segment_ids[sample.padding_mask] = -1
    masks, classes = panoptic_to_masks(segment_ids.numpy(), segments_info)
    return instances_from_masks(masks, classes, sample.image_hw)
