"""Training targets shared by the mappers: per-segment binary masks -> Detectron2 ``Instances``.

Every segmentation mapper returns the same target schema, ``Instances`` of the (padded) image
size with

* ``gt_classes``: ``(N,)`` int64 contiguous class ids,
* ``gt_masks``: :class:`BitMasks` over a ``(N, H, W)`` bool tensor (``.tensor`` for the raw masks),
* ``gt_boxes``: :class:`Boxes` ``(N, 4)`` float32, absolute XYXY, the tight box of each mask.

Masks that are empty after augmentation (a segment cropped away) are dropped: an empty target
mask only teaches a query to predict a class with nothing to segment.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Instances


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


def compressed_rle_counts(counts: bytes) -> List[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``).

    Raises ``ValueError`` when the string ends inside a number. pycocotools itself reads past the
    end in that case, and decodes an RLE whose runs do not cover the mask into uninitialised
    memory, which is why :func:`coco_segmentation_to_mask` checks the runs first.
    """
    runs: List[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("the compressed RLE string ends inside a number")
            chunk = counts[position] - 48
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            position += 1
            shift += 1
            if not more and chunk & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def check_rle_runs(runs: Sequence[Any], height: int, width: int, where: str) -> None:
    """Raise unless ``runs`` are non-negative integers covering exactly ``height * width`` pixels."""
    if any(not isinstance(r, (int, np.integer)) or r < 0 for r in runs):
        raise ValueError(f"RLE of {where} has negative or non-integer run lengths")
    if sum(int(r) for r in runs) != height * width:
        raise ValueError(
            f"RLE of {where} covers {sum(int(r) for r in runs)} pixels, but the image has "
            f"{height} x {width} = {height * width}"
        )


def check_polygon(polygon: Sequence[Any], height: int, width: int, where: str) -> None:
    """Raise unless a polygon's coordinates are finite and at most one image size outside the image.

    pycocotools' rasteriser loops or crashes the process on NaN / inf coordinates and on huge ones
    (1e8 segfaults), so they must never reach it; a polygon that far out is a broken annotation.
    """
    coordinates = np.asarray(polygon, dtype=np.float64)
    if not np.isfinite(coordinates).all():
        raise ValueError(f"Polygon of {where} has non-finite coordinates")
    xs, ys = coordinates[0::2], coordinates[1::2]
    if xs.min() < -width or xs.max() > 2 * width or ys.min() < -height or ys.max() > 2 * height:
        raise ValueError(
            f"Polygon of {where} reaches x in [{xs.min():g}, {xs.max():g}], y in "
            f"[{ys.min():g}, {ys.max():g}], far outside the {width} x {height} (W x H) image"
        )


def coco_segmentation_to_mask(
    segmentation, height: int, width: int, file_name: str, annotation_index: int
) -> np.ndarray:
    """Decode a COCO ``segmentation`` (polygons, uncompressed or compressed RLE) to ``(H, W)`` bool.

    Degenerate polygons are skipped, as Detectron2's ``load_coco_json`` skips them: fewer than 3
    points (COCO has a few) or an odd number of coordinates; a polygon of zero area rasterises to
    an empty mask, which the mappers drop. Raises ``ValueError`` naming the image file and the
    annotation index for a polygon with non-finite coordinates or far outside the image (see
    :func:`check_polygon`), and for an RLE whose ``size`` is not the image's or whose runs do not
    cover it exactly (pycocotools would return uninitialised memory).
    """
    where = f"annotation #{annotation_index} of {file_name!r}"
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        for polygon in polygons:
            check_polygon(polygon, height, width, where)
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict):
        if list(segmentation.get("size", [])) != [height, width]:
            raise ValueError(
                f"RLE of {where} has size {segmentation.get('size')}, but the image is "
                f"{[height, width]} (H, W)"
            )
        counts = segmentation.get("counts")
        if isinstance(counts, list):
            check_rle_runs(counts, height, width, where)
            rle = mask_util.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            encoded = counts.encode("ascii") if isinstance(counts, str) else counts
            try:
                runs = compressed_rle_counts(encoded)
            except ValueError as error:
                raise ValueError(f"RLE of {where}: {error}") from error
            check_rle_runs(runs, height, width, where)
            rle = {"size": [height, width], "counts": encoded}
        else:
            raise TypeError(f"RLE of {where} has counts of type {type(counts).__name__}")
    else:
        raise TypeError(
            f"{where} has a segmentation of type {type(segmentation).__name__}; "
            "expected a list of polygons or an RLE dict"
        )
    return mask_util.decode(rle).astype(bool)


def pad_to_divisibility(size_divisibility: int, hw: Tuple[int, int]) -> Tuple[int, int]:
    """Bottom/right padding ``(pad_h, pad_w)`` that makes ``hw`` a multiple of ``size_divisibility``."""
    if size_divisibility <= 0:
        return 0, 0
    height, width = hw
    return (-height) % size_divisibility, (-width) % size_divisibility


def pad_bottom_right(tensor: torch.Tensor, pad_hw: Tuple[int, int], value: float) -> torch.Tensor:
    """Pad the last two dims of ``tensor`` at the bottom and right by ``pad_hw`` with ``value``."""
    pad_h, pad_w = pad_hw
    if pad_h == 0 and pad_w == 0:
        return tensor
    return F.pad(tensor, (0, pad_w, 0, pad_h), value=value).contiguous()
