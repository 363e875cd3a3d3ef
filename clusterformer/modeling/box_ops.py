"""Box utilities in plain PyTorch (no torchvision needed).

Conventions: ``xyxy`` boxes are ``(x0, y0, x1, y1)`` with ``x1 >= x0``, ``y1 >= y0``; ``cxcywh``
boxes are ``(cx, cy, w, h)``. Boxes made from pixel masks use pixel-edge coordinates: a mask
covering pixel columns ``a..b`` gives ``x0 = a``, ``x1 = b + 1`` (Detectron2's ``BitMasks``
convention; torchvision's ``masks_to_boxes`` reports ``x1 = b``).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` cxcywh -> ``(..., 4)`` xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` xyxy -> ``(..., 4)`` cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to ``[eps, 1 - eps]`` (finite at 0 and 1)."""
    x = x.clamp(min=eps, max=1 - eps)
    return torch.log(x / (1 - x))


def box_area(boxes: Tensor) -> Tensor:
    """``(..., 4)`` xyxy -> ``(...)`` areas."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _check_xyxy(boxes: Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name}: boxes must be (N, 4), got {tuple(boxes.shape)}")


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes ``(N, 4)`` x ``(M, 4)`` -> ``(iou (N, M), union (N, M))``."""
    _check_xyxy(boxes1, "box_iou")
    _check_xyxy(boxes2, "box_iou")
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU (Rezatofighi et al. 2019) of xyxy boxes: ``(N, M)`` in [-1, 1].

    Raises ``ValueError`` on degenerate boxes (``x1 < x0`` or ``y1 < y0``), which would make the
    enclosing-box term meaningless.
    """
    _check_xyxy(boxes1, "generalized_box_iou")
    _check_xyxy(boxes2, "generalized_box_iou")
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not bool((b[:, 2:] >= b[:, :2]).all()):
            raise ValueError(
                f"generalized_box_iou: {name} has degenerate boxes (x1 < x0 or y1 < y0)"
            )
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight xyxy boxes (pixel-edge coordinates, see module docstring) of binary masks.

    Args:
        masks: ``(N, H, W)`` bool or {0, 1}.

    Returns:
        ``(N, 4)`` float32; an empty mask gives ``(0, 0, 0, 0)``.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks_to_boxes: masks must be (N, H, W), got {tuple(masks.shape)}")
    masks = masks.bool()
    N, H, W = masks.shape
    if N == 0:
        return torch.zeros(0, 4, device=masks.device)
    cols = masks.any(dim=1).to(torch.uint8)  # (N, W)
    rows = masks.any(dim=2).to(torch.uint8)  # (N, H)
    # argmax returns the first maximum: the first occupied column / row, from either end.
    x0 = cols.argmax(dim=1)
    x1 = W - cols.flip(1).argmax(dim=1)
    y0 = rows.argmax(dim=1)
    y1 = H - rows.flip(1).argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    nonempty = cols.any(dim=1)
    return boxes * nonempty[:, None]
