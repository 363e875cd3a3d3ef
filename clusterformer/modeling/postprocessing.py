"""Inference from per-query class, mask and box predictions (tensors in, tensors out; one image
at a time).

Inputs everywhere: ``mask_cls`` ``(Q, K + 1)`` class logits (last = "no object"), ``mask_pred``
``(Q, H, W)`` mask logits already resized to the output size (see :func:`resize_mask_logits`),
and boxes already converted to absolute xyxy at the output size (see
:func:`boxes_to_output_size`).

Class probabilities (``class_activation``): ``"softmax"`` over the ``K + 1`` logits, "no object"
dropped (a model trained with softmax cross-entropy); ``"sigmoid"`` of the first ``K`` logits (a
model trained with the sigmoid focal loss, whose last logit is untrained).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from .box_ops import box_cxcywh_to_xyxy, masks_to_boxes

CLASS_ACTIVATIONS = ("softmax", "sigmoid")


def keep_largest_component(masks: Tensor) -> Tensor:
    """``(n, H, W)`` bool masks -> the same with only each mask's largest 4-connected region (the
    first in raster order among equal ones; an empty mask stays empty). Runs on the CPU
    (``scipy.ndimage.label``); the result is on the masks' device."""
    if masks.dim() != 3:
        raise ValueError(
            f"keep_largest_component: masks must be (n, H, W), got {tuple(masks.shape)}"
        )
    kept = np.zeros(masks.shape, dtype=bool)
    for i, mask in enumerate(masks.bool().cpu().numpy()):
        labels, count = ndimage.label(mask)
        if count:
            sizes = np.bincount(labels.ravel())[1:]
            kept[i] = labels == 1 + int(sizes.argmax())
    return torch.from_numpy(kept).to(masks.device)


def class_probabilities(mask_cls: Tensor, class_activation: str = "softmax") -> Tensor:
    """``(Q, K + 1)`` logits -> ``(Q, K)`` fp32 class probabilities (see the module docstring)."""
    if class_activation == "softmax":
        return mask_cls.float().softmax(-1)[:, :-1]
    if class_activation == "sigmoid":
        return mask_cls[:, :-1].float().sigmoid()
    raise ValueError(
        f"class_activation must be one of {CLASS_ACTIVATIONS}, got {class_activation!r}"
    )


def boxes_to_output_size(
    boxes: Tensor,
    padded_size: Sequence[int],
    image_size: Sequence[int],
    output_size: Sequence[int],
) -> Tensor:
    """Normalised cxcywh boxes on the padded canvas -> absolute xyxy at the original image size.

    The decoder's boxes are normalised by the padded batch tensor (``padded_size``), the canvas
    every feature level covers. They are scaled to input pixels, clipped to this image's valid
    region ``image_size`` (the padding holds no object), then scaled to ``output_size``.

    Args:
        boxes: ``(Q, 4)`` normalised ``(cx, cy, w, h)``.
        padded_size: ``(H_pad, W_pad)`` of the padded input batch tensor.
        image_size: ``(h, w)`` of this image inside the padded tensor (after resizing).
        output_size: ``(height, width)`` wanted (the original image).

    Returns:
        ``(Q, 4)`` fp32 ``(x0, y0, x1, y1)``.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes_to_output_size: boxes must be (Q, 4), got {tuple(boxes.shape)}")
    h_pad, w_pad = (float(s) for s in padded_size)
    h, w = (float(s) for s in image_size)
    height, width = (float(s) for s in output_size)
    xyxy = box_cxcywh_to_xyxy(boxes.float())
    xs = (xyxy[:, 0::2] * w_pad).clamp(0.0, w) * (width / w)
    ys = (xyxy[:, 1::2] * h_pad).clamp(0.0, h) * (height / h)
    return torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], dim=-1)


def detection_inference(
    mask_cls: Tensor,
    box_pred: Tensor,
    *,
    test_topk_per_image: int = 100,
    class_activation: str = "softmax",
) -> Dict[str, Tensor]:
    """Boxes with a class and a score, the DETR-family rules.

    * ``"sigmoid"`` (focal-loss models, Deformable DETR / DINO): the ``test_topk_per_image``
      highest of the ``Q x K`` class probabilities; a query may give several classes.
    * ``"softmax"`` (DETR): each query's most probable class other than "no object"; the
      ``test_topk_per_image`` best queries are kept.

    Args:
        mask_cls: ``(Q, K + 1)`` class logits.
        box_pred: ``(Q, 4)`` absolute xyxy boxes at the output size.

    Returns:
        ``pred_boxes`` ``(n, 4)``, ``scores`` ``(n,)`` (the class probability), ``pred_classes``
        ``(n,)`` int64, sorted by descending score.
    """
    if mask_cls.dim() != 2 or box_pred.shape != (mask_cls.shape[0], 4):
        raise ValueError(
            f"detection_inference: expected mask_cls (Q, K+1) and box_pred (Q, 4), got "
            f"{tuple(mask_cls.shape)} and {tuple(box_pred.shape)}"
        )
    probs = class_probabilities(mask_cls, class_activation)
    Q, num_classes = probs.shape
    if class_activation == "sigmoid":
        k = min(test_topk_per_image, Q * num_classes)
        scores, flat_idx = probs.flatten().topk(k, sorted=True)
        classes = flat_idx % num_classes
        query_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
    else:
        best, best_class = probs.max(-1)
        scores, query_idx = best.topk(min(test_topk_per_image, Q), sorted=True)
        classes = best_class[query_idx]
    return {"pred_boxes": box_pred[query_idx], "scores": scores, "pred_classes": classes}


def sem_seg_postprocess(
    result: Tensor, image_size: Sequence[int], output_height: int, output_width: int
) -> Tensor:
    """Crop the padding off a prediction made at the padded input size and resize it.

    Args:
        result: ``(C, H_pad, W_pad)`` logits/probabilities at the padded input resolution.
        image_size: ``(h, w)`` of the valid (unpadded) input region, ``h <= H_pad``, ``w <= W_pad``.
        output_height, output_width: the original image size.

    Returns:
        ``(C, output_height, output_width)`` (bilinear, ``align_corners=False``).
    """
    h, w = int(image_size[0]), int(image_size[1])
    if result.dim() != 3 or h > result.shape[-2] or w > result.shape[-1]:
        raise ValueError(
            f"sem_seg_postprocess: result {tuple(result.shape)} must be (C, H, W) covering "
            f"image size {(h, w)}"
        )
    cropped = result[:, :h, :w]
    return F.interpolate(
        cropped[None],
        size=(int(output_height), int(output_width)),
        mode="bilinear",
        align_corners=False,
    )[0]


def resize_mask_logits(
    mask_logits: Tensor,
    padded_size: Sequence[int],
    image_size: Sequence[int],
    output_size: Sequence[int],
) -> Tensor:
    """Stride-4 mask logits -> logits at the original image size (Mask2Former's two steps).

    Args:
        mask_logits: ``(Q, H/4, W/4)`` for the padded input.
        padded_size: ``(H_pad, W_pad)`` of the padded input batch tensor.
        image_size: ``(h, w)`` of this image inside the padded tensor (after resizing).
        output_size: ``(height, width)`` wanted (the original image).

    Returns:
        ``(Q, height, width)``.
    """
    up = F.interpolate(
        mask_logits[None],
        size=tuple(int(s) for s in padded_size),
        mode="bilinear",
        align_corners=False,
    )[0]
    return sem_seg_postprocess(up, image_size, output_size[0], output_size[1])


def _check(mask_cls: Tensor, mask_pred: Tensor, name: str) -> None:
    if mask_cls.dim() != 2 or mask_pred.dim() != 3 or mask_cls.shape[0] != mask_pred.shape[0]:
        raise ValueError(
            f"{name}: expected mask_cls (Q, K+1) and mask_pred (Q, H, W), got "
            f"{tuple(mask_cls.shape)} "
            f"and {tuple(mask_pred.shape)}"
        )


def semantic_inference(mask_cls: Tensor, mask_pred: Tensor) -> Tensor:
    """``(K, H, W)`` class scores: ``sum_q softmax(mask_cls)[q, :K] * sigmoid(mask_pred[q])``."""
    _check(mask_cls, mask_pred, "semantic_inference")
    probs = mask_cls.float().softmax(-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.float().sigmoid())


def panoptic_inference(
    mask_cls: Tensor,
    mask_pred: Tensor,
    *,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    thing_ids: Set[int] = frozenset(),
    label_divisor: Optional[int] = None,
) -> Tuple[Tensor, List[Dict[str, object]]]:
    """Non-overlapping panoptic segmentation (Mask2Former's rules).

    1. Keep queries whose top class is not "no object" and whose score (its softmax probability)
       is ``> object_mask_threshold``.
    2. Each pixel goes to the kept query maximising ``score * sigmoid(mask)``.
    3. A query's segment = its pixels from 2 that also have ``sigmoid(mask) >= 0.5``. It is dropped
       when empty or when ``segment area / area of sigmoid(mask) >= 0.5`` is ``< overlap_threshold``
       (mostly covered by other queries).
    4. Segments of the same stuff class are merged into one; things stay separate instances.

    Args:
        thing_ids: contiguous class ids that are things.
        label_divisor: ``None``: segment ids ``1, 2, ...`` in creation order. An int ``D``:
            segment id ``= category_id * D + k`` with ``k >= 1`` counting that category's segments
            (so ``id // D`` is the category; ``k < D`` is checked).

    Returns:
        ``panoptic_seg`` ``(H, W)`` int32 (0 = void) and ``segments_info``, one dict per segment:
        ``{"id", "category_id", "isthing", "score"}`` (``score``: the query's class probability;
        for a merged stuff segment, that of its first query), as Detectron2's panoptic outputs.
    """
    _check(mask_cls, mask_pred, "panoptic_inference")
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = mask_cls.float().softmax(-1).max(-1)
    mask_probs = mask_pred.float().sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_probs[keep]
    H, W = mask_pred.shape[-2:]
    panoptic_seg = torch.zeros((H, W), dtype=torch.int32, device=mask_pred.device)
    segments_info: List[Dict[str, object]] = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info

    owner = (cur_scores[:, None, None] * cur_masks).argmax(0)
    stuff_segment_of_class: Dict[int, int] = {}
    segments_per_class: Dict[int, int] = {}
    next_id = 0
    for k in range(cur_classes.shape[0]):
        category = int(cur_classes[k])
        isthing = category in thing_ids
        original = cur_masks[k] >= 0.5
        segment = (owner == k) & original
        original_area = int(original.sum())
        owned_area = int((owner == k).sum())
        segment_area = int(segment.sum())
        if owned_area == 0 or original_area == 0 or segment_area == 0:
            continue
        if owned_area / original_area < overlap_threshold:
            continue
        if not isthing and category in stuff_segment_of_class:
            panoptic_seg[segment] = stuff_segment_of_class[category]
            continue
        if label_divisor is None:
            next_id += 1
            segment_id = next_id
        else:
            count = segments_per_class.get(category, 0) + 1
            if count >= label_divisor:
                raise ValueError(
                    f"panoptic_inference: more than {label_divisor - 1} segments of class "
                    f"{category}"
                )
            segments_per_class[category] = count
            segment_id = category * label_divisor + count
        if not isthing:
            stuff_segment_of_class[category] = segment_id
        panoptic_seg[segment] = segment_id
        segments_info.append(
            {
                "id": segment_id,
                "isthing": isthing,
                "category_id": category,
                "score": float(cur_scores[k]),
            }
        )
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls: Tensor,
    mask_pred: Tensor,
    *,
    test_topk_per_image: int = 100,
    thing_ids: Optional[Set[int]] = None,
    panoptic_on: bool = False,
    box_pred: Optional[Tensor] = None,
    class_activation: str = "softmax",
    largest_component: bool = False,
) -> Dict[str, Tensor]:
    """Top-k (query, class) pairs as instances (Mask2Former's rule, with real boxes).

    Every query may yield several instances of different classes: the ``test_topk_per_image``
    highest class probabilities (no-object excluded) over the ``Q x K`` pairs are kept. With
    ``panoptic_on`` only thing classes are kept (``thing_ids`` required), as in Mask2Former where
    the panoptic model also reports instances.

    Args:
        box_pred: ``(Q, 4)`` predicted absolute xyxy boxes at the output size (a box-level
            model); ``None``: boxes are computed from the binary masks.
        class_activation: ``"softmax"`` or ``"sigmoid"`` (module docstring).
        largest_component: each binary mask keeps only its largest connected region
            (:func:`keep_largest_component`) before its score and box are computed.

    Returns:
        ``pred_masks`` ``(n, H, W)`` bool (``mask logit > 0``); ``scores`` ``(n,)`` = class
        probability x mean ``sigmoid(mask)`` inside the binary mask; ``pred_classes`` ``(n,)``
        int64; ``pred_boxes`` ``(n, 4)``: the query's ``box_pred``, else the xyxy absolute pixel
        edges of the binary mask (empty mask: zeros). Sorted by descending class probability.
    """
    _check(mask_cls, mask_pred, "instance_inference")
    if panoptic_on and thing_ids is None:
        raise ValueError("instance_inference: panoptic_on=True needs thing_ids")
    if box_pred is not None and box_pred.shape != (mask_cls.shape[0], 4):
        raise ValueError(
            f"instance_inference: box_pred must be ({mask_cls.shape[0]}, 4), got "
            f"{tuple(box_pred.shape)}"
        )
    Q, num_classes = mask_cls.shape[0], mask_cls.shape[1] - 1
    probs = class_probabilities(mask_cls, class_activation)
    k = min(test_topk_per_image, Q * num_classes)
    class_scores, flat_idx = probs.flatten().topk(k, sorted=True)
    classes = flat_idx % num_classes
    query_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
    if panoptic_on:
        is_thing = torch.tensor([int(c) in thing_ids for c in classes.tolist()], dtype=torch.bool)
        is_thing = is_thing.to(classes.device)
        class_scores, classes, query_idx = (
            class_scores[is_thing],
            classes[is_thing],
            query_idx[is_thing],
        )
    logits = mask_pred[query_idx].float()
    binary = logits > 0
    if largest_component:
        binary = keep_largest_component(binary)
    mask_scores = (logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return {
        "pred_masks": binary,
        "scores": class_scores * mask_scores,
        "pred_classes": classes,
        "pred_boxes": masks_to_boxes(binary) if box_pred is None else box_pred[query_idx].float(),
    }
