"""COCO instance annotations (``annotations`` of a Detectron2 data set dict) through augmentation.

Segmentations (polygons or RLE) are decoded to binary masks at the original image size and then
transformed like a label map. Transforming polygons instead would need shapely for crops (which
Detectron2 does not require), and the mask route treats polygons and RLE the same way.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from .targets import check_contiguous_category_id, coco_segmentation_to_mask


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


def annotation_classes(annotations: Sequence[dict]) -> List[int]:
    """The contiguous ``category_id`` of each annotation."""
    return [int(a["category_id"]) for a in annotations]
