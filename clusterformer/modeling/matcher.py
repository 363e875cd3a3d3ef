"""Hungarian matching of predictions to targets (DETR / Mask2Former), with optional box costs.

Cost of predicting target ``j`` with query ``i``::

    C[i, j] = w_class * class_cost + w_mask * BCE_ij + w_dice * Dice_ij
              + w_bbox * |b_i - b_j|_1 + w_giou * (-GIoU(b_i, b_j))

The mask costs are computed on ``num_points`` random points shared by the predictions and the
targets of an image (or on all pixels when ``num_points <= 0``; the predictions are then resized
to the target resolution).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .point_sampling import point_sample, random_points

CLASS_COST_CHOICES = ("softmax", "focal")

# One layer's predictions (``pred_logits`` (B, Q, K + 1), ``pred_masks`` (B, Q, H', W'),
# ``pred_boxes`` (B, Q, 4)), the images' targets (``labels`` (n_b,), ``masks`` (n_b, H', W'),
# ``boxes`` (n_b, 4)), and per image the matched (query indices, target indices).
Outputs = Dict[str, Tensor]
Targets = List[Dict[str, Tensor]]
Matches = List[Tuple[Tensor, Tensor]]


def batch_sigmoid_ce_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid binary cross-entropy of every prediction against every target.

    Args:
        inputs: ``(..., Q, P)`` logits; targets: ``(..., T, P)`` in ``[0, 1]``.

    Returns:
        ``(..., Q, T)``.
    """
    # BCE(x, 1) = softplus(-x) = softplus(x) - x and BCE(x, 0) = softplus(x), so
    # sum_p BCE(x_p, t_p) = sum_p softplus(x_p) - x . t: one softplus and one product.
    P = inputs.shape[-1]
    return (F.softplus(inputs).sum(-1, keepdim=True) - inputs @ targets.transpose(-2, -1)) / P


def batch_dice_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` of every prediction against every target.

    Args:
        inputs: ``(..., Q, P)`` logits; targets: ``(..., T, P)`` in ``[0, 1]``.

    Returns:
        ``(..., Q, T)``.
    """
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.transpose(-2, -1)
    denominator = probs.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def focal_class_cost(logits: Tensor, target_ids: Tensor, alpha: float, gamma: float) -> Tensor:
    """Deformable-DETR's focal classification cost ``(Q, T)`` from sigmoid logits ``(Q, K')``."""
    prob = logits.sigmoid()
    neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
    return pos[:, target_ids] - neg[:, target_ids]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising the weighted cost above.

    Args:
        cost_class: weight of the class cost (``-p_i(c_j)`` for ``"softmax"``).
        cost_mask: weight of the sigmoid-BCE mask cost.
        cost_dice: weight of the Dice mask cost.
        num_points: points per image for the mask costs (``<= 0``: all target pixels).
        cost_bbox: weight of the L1 cost on normalised cxcywh boxes (0 = off).
        cost_giou: weight of the ``-GIoU`` cost (0 = off).
        class_cost_type: ``"softmax"`` (softmax over K+1 logits, Mask2Former) or ``"focal"``
            (sigmoid focal cost on the first K logits, DETR-family detectors).
        focal_alpha, focal_gamma: focal cost parameters.

    ``forward(outputs, targets, generator=None)``:
        * ``outputs``: ``pred_logits`` ``(B, Q, K + 1)``; ``pred_masks`` ``(B, Q, H, W)`` when a
          mask cost is on; ``pred_boxes`` ``(B, Q, 4)`` normalised cxcywh when a box cost is on;
        * ``targets``: ``B`` dicts with ``labels`` ``(n,)`` int64, ``masks`` ``(n, H', W')``
          (mask costs), ``boxes`` ``(n, 4)`` normalised cxcywh (box costs);
        * ``generator``: optional RNG for the points.

        Returns ``B`` pairs ``(query_indices, target_indices)``, int64 CPU tensors of length
        ``min(Q, n)``, sorted by query index.
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 12544,
        cost_bbox: float = 0.0,
        cost_giou: float = 0.0,
        class_cost_type: str = "softmax",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if class_cost_type not in CLASS_COST_CHOICES:
            raise ValueError(
                f"HungarianMatcher: class_cost_type must be one of {CLASS_COST_CHOICES}"
            )
        costs = (cost_class, cost_mask, cost_dice, cost_bbox, cost_giou)
        if all(c == 0 for c in costs):
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.num_points = num_points
        self.class_cost_type = class_cost_type
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @property
    def uses_masks(self) -> bool:
        return self.cost_mask != 0 or self.cost_dice != 0

    @property
    def uses_boxes(self) -> bool:
        return self.cost_bbox != 0 or self.cost_giou != 0

    def _mask_costs(
        self,
        pred_masks: Tensor,
        tgt_masks: List[Tensor],
        generator: Optional[torch.Generator],
    ) -> List[Tuple[Tensor, Tensor]]:
        """``pred_masks`` ``(B, Q, H, W)`` and ``B`` target masks ``(n_b, H', W')`` (every
        ``n_b > 0``) -> per image the BCE and Dice costs ``(Q, n_b)``.

        The predictions of all images are read in one call (and their points drawn in one call,
        which on the CPU is the same random stream as one draw per image)."""
        pred = pred_masks.float()
        if self.num_points > 0:
            points = random_points(len(tgt_masks), self.num_points, pred.device, generator)
            pred_points = point_sample(pred, points)  # (B, Q, P)
            tgt_points = [
                point_sample(tgt.float()[:, None], p.expand(len(tgt), -1, -1))[:, 0]
                for tgt, p in zip(tgt_masks, points[:, None])
            ]
        else:
            size = tgt_masks[0].shape[-2:]
            pred_points = F.interpolate(pred, size=size, mode="bilinear", align_corners=False)
            pred_points = pred_points.flatten(2)
            tgt_points = [tgt.float().flatten(1) for tgt in tgt_masks]
        # One batched product for all images, their targets padded with empty masks.
        tgt = nn.utils.rnn.pad_sequence(tgt_points, batch_first=True)  # (B, T_max, P)
        bce, dice = batch_sigmoid_ce_cost(pred_points, tgt), batch_dice_cost(pred_points, tgt)
        return [(bce[b, :, :n], dice[b, :, :n]) for b, n in enumerate(map(len, tgt_masks))]

    @torch.no_grad()
    def cost_matrices(
        self, outputs: Outputs, targets: Targets, generator: Optional[torch.Generator] = None
    ) -> List[Tensor]:
        """The ``(Q, n_b)`` cost matrix of every image (fp32, on the outputs' device)."""
        logits = outputs["pred_logits"]
        B, Q, _ = logits.shape
        if len(targets) != B:
            raise ValueError(f"HungarianMatcher: {B} predictions but {len(targets)} targets")
        for key, needed in (("pred_masks", self.uses_masks), ("pred_boxes", self.uses_boxes)):
            if needed and key not in outputs:
                raise KeyError(
                    f"HungarianMatcher: a {key[5:-2]} cost is on but outputs lack {key!r}"
                )
        nonempty = [b for b, t in enumerate(targets) if t["labels"].numel() > 0]
        with torch.autocast(device_type=logits.device.type, enabled=False):
            if self.class_cost_type == "softmax":
                probs = logits.float().softmax(-1)
            mask_costs = {}
            if self.uses_masks and nonempty:
                for b in nonempty:
                    if "masks" not in targets[b]:
                        raise KeyError(
                            f"HungarianMatcher: target {b} has no 'masks' but a mask cost is on"
                        )
                pred_masks = outputs["pred_masks"][nonempty]
                tgt_masks = [targets[b]["masks"] for b in nonempty]
                costs_of = self._mask_costs(pred_masks, tgt_masks, generator)
                mask_costs = dict(zip(nonempty, costs_of))
            costs = []
            for b, target in enumerate(targets):
                labels = target["labels"]
                if labels.numel() == 0:
                    costs.append(logits.new_zeros(Q, 0, dtype=torch.float32))
                    continue
                if self.class_cost_type == "softmax":
                    cost = -probs[b][:, labels] * self.cost_class
                else:
                    cost = self.cost_class * focal_class_cost(
                        logits[b].float(), labels, self.focal_alpha, self.focal_gamma
                    )
                if self.uses_masks:
                    bce, dice = mask_costs[b]
                    cost = cost + self.cost_mask * bce + self.cost_dice * dice
                if self.uses_boxes:
                    if "boxes" not in target:
                        raise KeyError(
                            f"HungarianMatcher: target {b} has no 'boxes' but a box cost is on"
                        )
                    pred_boxes = outputs["pred_boxes"][b].float()
                    tgt_boxes = target["boxes"].float()
                    if self.cost_bbox != 0:
                        cost = cost + self.cost_bbox * torch.cdist(pred_boxes, tgt_boxes, p=1)
                    if self.cost_giou != 0:
                        giou = generalized_box_iou(
                            box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes)
                        )
                        cost = cost - self.cost_giou * giou
                costs.append(cost)
        return costs

    @torch.no_grad()
    def forward(
        self, outputs: Outputs, targets: Targets, generator: Optional[torch.Generator] = None
    ) -> Matches:
        indices = []
        for b, cost in enumerate(self.cost_matrices(outputs, targets, generator)):
            cost = cost.cpu()
            if not bool(torch.isfinite(cost).all()):
                raise ValueError(f"HungarianMatcher: non-finite matching cost for image {b}")
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append(
                (
                    torch.as_tensor(rows, dtype=torch.int64),
                    torch.as_tensor(np.asarray(cols), dtype=torch.int64),
                )
            )
        return indices
