"""Assignment restrictions: which tokens of a level each query may take part in clustering.

A restriction is a ``(B, Q, h * w)`` bool tensor, True where token ``n`` of the level may be
assigned to query ``q`` (see :mod:`.cross_attention`). It comes from the previous prediction of
the decoder and carries no gradient:

* pixel level (docs/method.md §2): the query's predicted mask, thresholded (Mask2Former's attention
  mask), :func:`mask_assignment_restriction`;
* box level (docs/method.md §3): the query's current box, :func:`box_assignment_restriction`;
* both: :func:`restrict_within` (mask AND box, falling back to the box).

Token ``(i, j)`` of an ``h x w`` level covers the cell ``[j / w, (j + 1) / w] x [i / h, (i + 1) / h]``
of the normalised padded canvas (every level covers the whole padded input).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..box_ops import box_cxcywh_to_xyxy
from .cross_attention import release_empty_restrictions

__all__ = [
    "box_assignment_restriction",
    "mask_assignment_restriction",
    "release_empty_restrictions",
    "resize_like_restriction",
    "restrict_within",
]


def mask_assignment_restriction(
    mask_logits: Tensor, size: Sequence[int], threshold: float = 0.5
) -> Tensor:
    """Which pixels of a level each query may be assigned (Mask2Former's attention-mask rule).

    Args:
        mask_logits: ``(B, Q, H, W)`` predicted mask logits (at the mask-feature resolution).
        size: ``(h, w)`` of the level.
        threshold: a pixel is allowed when its resized mask probability is ``>= threshold``.

    Returns:
        ``(B, Q, h * w)`` bool, without gradient. Queries may come out empty; see
        :func:`release_empty_restrictions`.
    """
    resized = resize_like_restriction(mask_logits.detach().float(), size)
    return (resized.sigmoid() >= threshold).flatten(2)


def resize_like_restriction(maps: Tensor, size: Sequence[int]) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, C, h, w)``, the bilinear resizing of the mask restriction (a
    no-op at the same size). Being linear, it commutes with the per-pixel products of the mask
    head: resizing the mask features gives the resized mask logits."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def box_assignment_restriction(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """Tokens of an ``h x w`` level inside each query's box.

    A token is inside a box when its cell (see the module docstring) overlaps the box with
    positive area, i.e. the tokens a conservative rasterisation of the box covers. Unlike a
    "cell centre inside the box" rule, a box smaller than a cell (a small object at stride 32)
    still keeps the token(s) it lies in. A box (cx, cy, w, h) with ``w, h > 0`` and its centre in
    ``(0, 1)`` (any sigmoid output) overlaps at least one cell, so the result is never empty for
    such boxes; parts of a box outside the canvas select nothing.

    Args:
        boxes: ``(B, Q, 4)`` normalised ``(cx, cy, w, h)`` on the padded canvas.
        size: ``(h, w)`` of the level.

    Returns:
        ``(B, Q, h * w)`` bool, without gradient.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(
            f"box_assignment_restriction: boxes must be (B, Q, 4) cxcywh, got {tuple(boxes.shape)}"
        )
    h, w = int(size[0]), int(size[1])
    x0, y0, x1, y1 = box_cxcywh_to_xyxy(boxes.detach().float()).unbind(-1)
    cols = torch.arange(w, device=boxes.device, dtype=torch.float32)
    rows = torch.arange(h, device=boxes.device, dtype=torch.float32)
    # Cell j spans [j, j + 1] in units of cells: overlap iff x0 < j + 1 and x1 > j.
    in_cols = (x0[..., None] * w < cols + 1) & (x1[..., None] * w > cols)  # (B, Q, w)
    in_rows = (y0[..., None] * h < rows + 1) & (y1[..., None] * h > rows)  # (B, Q, h)
    return (in_rows[..., :, None] & in_cols[..., None, :]).flatten(2)


def restrict_within(outer: Tensor, inner: Tensor) -> Tensor:
    """``outer AND inner``; a query whose intersection is empty keeps ``outer`` alone.

    With ``outer`` the box restriction and ``inner`` the mask restriction, a query keeps the
    tokens of its predicted mask inside its box; when its mask has no token inside the box (an
    empty or misplaced mask at this level) the mask part is released first, the box part stays.
    Apply :func:`release_empty_restrictions` afterwards for queries whose ``outer`` is empty.

    Args:
        outer, inner: ``(B, Q, N)`` bool.

    Returns:
        ``(B, Q, N)`` bool.
    """
    both = outer & inner
    empty = ~both.any(dim=-1, keepdim=True)
    # torch.where(empty, outer, both) in logical ops: ONNX Runtime has no Where for bool tensors.
    return both | (outer & empty)
