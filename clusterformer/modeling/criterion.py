"""Set-prediction losses (Mask2Former's ``SetCriterion``, written for this project).

After Hungarian matching, the losses are

* ``loss_ce``: cross-entropy over ``K + 1`` classes of every query (unmatched queries target
  "no object", weighted by ``eos_coef``), weighted mean over queries; or, with
  ``class_loss="sigmoid_focal"``, the sigmoid focal loss on the first ``K`` logits summed over
  queries and classes and divided by the number of targets;
* ``loss_mask`` / ``loss_dice``: sigmoid BCE (mean over points) and Dice of each matched mask,
  summed and divided by the number of targets, on ``num_points`` points per mask chosen by
  uncertainty-based importance sampling (or on all target pixels when ``num_points <= 0``);
* ``loss_bbox`` / ``loss_giou`` (with ``"boxes"`` in ``losses``): L1 on normalised cxcywh and
  ``1 - GIoU``, summed and divided by the number of targets.

Two auxiliary losses of kMaX-DeepLab's k-means decoder (off by default; docs/design_choices.md):

* ``loss_mask_id`` (``"mask_id"``): at every pixel a target covers, cross-entropy of the softmax
  over the queries' mask logits against the query matched to that target (mean over those
  pixels); it makes the masks compete for pixels as the clustering E-step does;
* ``loss_sem_seg`` (``"semantic"``): per-pixel cross-entropy of ``pred_semantic`` against the
  class of the target covering the pixel (void pixels ignored); computed once, on the final
  outputs, since it does not depend on the queries.

With deep supervision every ``outputs["aux_outputs"][i]`` is matched and scored again; its losses
carry the suffix ``_i``. ``forward`` returns unweighted losses; :meth:`SetCriterion.weight_losses`
applies the weights.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .matcher import HungarianMatcher, Matches, Outputs, Targets
from .point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
)

LOSS_CHOICES = ("labels", "masks", "boxes", "mask_id", "semantic")
CLASS_LOSS_CHOICES = ("softmax_ce", "sigmoid_focal")
_SUFFIX = re.compile(r"_\d+$")
# Target of pixels no target covers, in the per-pixel auxiliary losses.
IGNORE = -100

Losses = Dict[str, Tensor]


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """``inputs``/``targets`` ``(n, P)``: BCE mean over P, summed over masks / ``num_masks``."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """``inputs`` logits / ``targets`` ``(n, P)``: ``1 - (2|pt| + 1) / (|p| + |t| + 1)`` summed
    over masks / ``num_masks``."""
    probs = inputs.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, num_boxes: float, alpha: float, gamma: float
) -> Tensor:
    """Focal loss summed over all elements / ``num_boxes``; ``alpha < 0``: off."""
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum() / num_boxes


def _downsample_masks(masks: Tensor, size: Sequence[int]) -> Tensor:
    """``(n, H, W)`` target masks -> ``(n, h, w)`` bool, nearest (pixel-centre) sampling."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.bool()
    return F.interpolate(masks[None].float(), size=tuple(size), mode="nearest")[0] > 0.5


def _paint(masks: Tensor, values: Tensor, size: Sequence[int]) -> Tensor:
    """``(n, H, W)`` masks and ``(n,)`` values -> ``(h, w)`` int64 map of the value of the last
    mask covering each pixel (nearest downsampling), ``IGNORE`` where none does."""
    # On the masks' device: the matcher's indices (values of the mask-id loss) live on the CPU.
    out = torch.full(tuple(size), IGNORE, dtype=torch.int64, device=masks.device)
    for value, mask in zip(values.tolist(), _downsample_masks(masks, size)):
        out[mask] = value
    return out


def _pixel_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy of ``(B, C, h, w)`` logits over the pixels of ``(B, h, w)`` ``target``
    that are not ``IGNORE`` (0, still in the graph, when there are none)."""
    if not bool((target != IGNORE).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target.to(logits.device), ignore_index=IGNORE)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SetCriterion(nn.Module):
    """Matching + losses for mask classification (and optionally boxes).

    Args:
        num_classes: ``K`` (without "no object").
        matcher: a :class:`HungarianMatcher`.
        eos_coef: weight of the "no object" class in ``loss_ce`` (softmax CE).
        class_weight, mask_weight, dice_weight, box_l1_weight, giou_weight, mask_id_weight,
            semantic_weight: loss weights used by :meth:`weight_losses`.
        losses: which losses: any of ``"labels"``, ``"masks"``, ``"boxes"``, ``"mask_id"``,
            ``"semantic"``.
        num_points: points per mask (``<= 0``: every pixel of the target resolution, predictions
            upsampled bilinearly; exact but memory-hungry, for tests and small inputs).
        oversample_ratio, importance_sample_ratio: point selection (see
            ``get_uncertain_point_coords_with_randomness``).
        deep_supervision: also score ``outputs["aux_outputs"]``.
        class_loss: ``"softmax_ce"`` or ``"sigmoid_focal"``.
        focal_alpha, focal_gamma: focal loss parameters.

    ``forward(outputs, targets, generator=None) -> {loss name: scalar}``:
        * ``outputs``: ``pred_logits`` ``(B, Q, K + 1)``, ``pred_masks`` ``(B, Q, H, W)``, optional
          ``pred_boxes`` ``(B, Q, 4)`` normalised cxcywh, ``pred_semantic`` ``(B, K, H, W)`` for
          the semantic loss, optional ``aux_outputs`` (list of dicts with the same keys);
        * ``targets``: ``B`` dicts ``{"labels": (n,) int64, "masks": (n, H', W') bool/float}`` at
          the padded input resolution (the same ``H', W'`` for every image of the batch), plus
          ``"boxes": (n, 4)`` normalised cxcywh for box losses;
        * ``generator``: optional RNG for every random point (matcher and losses); with ``None``
          the global RNG of the outputs' device is used.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        *,
        eos_coef: float = 0.1,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        box_l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        mask_id_weight: float = 0.0,
        semantic_weight: float = 0.0,
        losses: Sequence[str] = ("labels", "masks"),
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
        class_loss: str = "softmax_ce",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        unknown = set(losses) - set(LOSS_CHOICES)
        if unknown:
            raise ValueError(
                f"SetCriterion: unknown losses {sorted(unknown)}; choose from {LOSS_CHOICES}"
            )
        if class_loss not in CLASS_LOSS_CHOICES:
            raise ValueError(
                f"SetCriterion: class_loss must be one of {CLASS_LOSS_CHOICES}, got {class_loss!r}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        self.class_loss = class_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.weight_dict = {
            "loss_ce": class_weight,
            "loss_mask": mask_weight,
            "loss_dice": dice_weight,
            "loss_bbox": box_l1_weight,
            "loss_giou": giou_weight,
            "loss_mask_id": mask_id_weight,
            "loss_sem_seg": semantic_weight,
        }
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = eos_coef
        self.register_buffer("empty_weight", class_weights, persistent=False)

    # ---- individual losses -------------------------------------------------------------------
    def loss_labels(
        self, outputs: Outputs, targets: Targets, indices: Matches, num_masks: float
    ) -> Losses:
        logits = outputs["pred_logits"].float()
        B, Q, num_logits = logits.shape
        if num_logits != self.num_classes + 1:
            raise ValueError(
                f"SetCriterion: pred_logits has {num_logits} classes, expected num_classes + 1 "
                f"= {self.num_classes + 1}"
            )
        batch_idx, query_idx = self._prediction_index(indices)
        target_classes = torch.full(
            (B, Q), self.num_classes, dtype=torch.int64, device=logits.device
        )
        matched = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(
            logits.device
        )
        target_classes[batch_idx, query_idx] = matched
        if self.class_loss == "softmax_ce":
            loss = F.cross_entropy(
                logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.device)
            )
        else:
            one_hot = F.one_hot(target_classes, self.num_classes + 1)[
                ..., : self.num_classes
            ].float()
            loss = sigmoid_focal_loss(
                logits[..., : self.num_classes],
                one_hot,
                num_masks,
                self.focal_alpha,
                self.focal_gamma,
            )
        return {"loss_ce": loss}

    def loss_masks(
        self,
        outputs: Outputs,
        targets: Targets,
        indices: Matches,
        num_masks: float,
        generator: Optional[torch.Generator] = None,
        target_masks: Optional[Tensor] = None,
    ) -> Losses:
        """``target_masks``: ``(sum_b n_b, H', W')`` fp32, every image's target masks in order
        (stacked from ``targets`` when None; :meth:`forward` stacks them once for all layers)."""
        pred_masks = outputs["pred_masks"]
        batch_idx, query_idx = self._prediction_index(indices)
        if batch_idx.numel() == 0:
            # Keep the graph connected (DDP) while contributing nothing.
            zero = pred_masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        src = pred_masks[batch_idx.to(pred_masks.device), query_idx.to(pred_masks.device)].float()[
            :, None
        ]
        if target_masks is None:
            target_masks = self._stacked_target_masks(targets)
        target_masks = target_masks.to(src.device)
        # Row of target_masks of each matched target, in the order of src.
        offsets = torch.tensor([0] + [len(t["masks"]) for t in targets]).cumsum(0)
        tgt_index = torch.cat([j + offsets[b] for b, (_, j) in enumerate(indices)]).to(src.device)
        with torch.autocast(device_type=src.device.type, enabled=False):
            if self.num_points > 0:
                with torch.no_grad():
                    points = get_uncertain_point_coords_with_randomness(
                        src,
                        calculate_uncertainty,
                        self.num_points,
                        self.oversample_ratio,
                        self.importance_sample_ratio,
                        generator,
                    )
                    # Each target is read at its match's points where it lies, instead of
                    # gathering the full-resolution masks of every layer's matches (targets
                    # without a match are read at one dummy point set and dropped).
                    grid = points.new_zeros(len(target_masks), *points.shape[1:])
                    grid[tgt_index] = points
                    tgt_points = point_sample(target_masks[:, None], grid)[tgt_index, 0]
                src_points = point_sample(src, points)[:, 0]
            else:
                tgt_points = target_masks[tgt_index].flatten(1)
                src_points = F.interpolate(
                    src, size=target_masks.shape[-2:], mode="bilinear", align_corners=False
                ).flatten(1)
            return {
                "loss_mask": sigmoid_ce_loss(src_points, tgt_points, num_masks),
                "loss_dice": dice_loss(src_points, tgt_points, num_masks),
            }

    def loss_boxes(
        self, outputs: Outputs, targets: Targets, indices: Matches, num_masks: float
    ) -> Losses:
        if "pred_boxes" not in outputs:
            raise KeyError("SetCriterion: 'boxes' loss requested but outputs lack 'pred_boxes'")
        pred_boxes = outputs["pred_boxes"]
        batch_idx, query_idx = self._prediction_index(indices)
        if batch_idx.numel() == 0:
            zero = pred_boxes.sum() * 0.0
            return {"loss_bbox": zero, "loss_giou": zero}
        src = pred_boxes[batch_idx, query_idx].float()
        tgt = (
            torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src.device).float()
        )
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_masks
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)))
        return {"loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num_masks}

    def loss_mask_id(self, outputs: Outputs, targets: Targets, indices: Matches) -> Losses:
        pred_masks = outputs["pred_masks"].float()
        query_ids = []
        for target, (src, tgt) in zip(targets, indices):
            order = tgt.argsort()  # target order, as the semantic loss paints them
            query_ids.append(_paint(target["masks"][tgt[order]], src[order], pred_masks.shape[-2:]))
        return {"loss_mask_id": _pixel_cross_entropy(pred_masks, torch.stack(query_ids))}

    def loss_semantic(self, outputs: Outputs, targets: Targets) -> Losses:
        if "pred_semantic" not in outputs:
            raise KeyError(
                "SetCriterion: 'semantic' loss requested but outputs lack 'pred_semantic'"
            )
        logits = outputs["pred_semantic"].float()
        classes = [_paint(t["masks"], t["labels"], logits.shape[-2:]) for t in targets]
        return {"loss_sem_seg": _pixel_cross_entropy(logits, torch.stack(classes))}

    # ---- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _prediction_index(indices: Matches) -> Tuple[Tensor, Tensor]:
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
        query_idx = torch.cat([src for src, _ in indices])
        return batch_idx, query_idx

    @staticmethod
    def _stacked_target_masks(targets: Targets) -> Tensor:
        """Every image's target masks in one ``(sum_b n_b, H', W')`` fp32 tensor."""
        masks = [t["masks"] for t in targets if t["masks"].shape[0] > 0]
        sizes = {tuple(m.shape[-2:]) for m in masks}
        if len(sizes) > 1:
            raise ValueError(
                "SetCriterion: target masks of one batch must share the padded input size, got "
                f"{sorted(sizes)}"
            )
        if not masks:
            return torch.zeros(0, 1, 1, device=targets[0]["masks"].device if targets else None)
        return torch.cat(masks).float()

    def num_target_masks(self, targets: Targets, device: torch.device) -> float:
        """Targets per worker, averaged over the workers of torch.distributed if any (>= 1)."""
        count = torch.as_tensor(
            [float(sum(len(t["labels"]) for t in targets))], dtype=torch.float32, device=device
        )
        world = _world_size()
        if world > 1:
            dist.all_reduce(count)
        return max(count.item() / world, 1.0)

    def _losses_for(
        self,
        outputs: Outputs,
        targets: Targets,
        num_masks: float,
        generator: Optional[torch.Generator],
        target_masks: Optional[Tensor],
    ) -> Losses:
        indices = self.matcher(outputs, targets, generator=generator)
        losses: Losses = {}
        for name in self.losses:
            if name == "labels":
                losses.update(self.loss_labels(outputs, targets, indices, num_masks))
            elif name == "masks":
                losses.update(
                    self.loss_masks(outputs, targets, indices, num_masks, generator, target_masks)
                )
            elif name == "boxes":
                losses.update(self.loss_boxes(outputs, targets, indices, num_masks))
            elif name == "mask_id":
                losses.update(self.loss_mask_id(outputs, targets, indices))
        return losses

    def forward(
        self,
        outputs: Dict[str, object],
        targets: Targets,
        generator: Optional[torch.Generator] = None,
    ) -> Losses:
        logits = outputs["pred_logits"]
        if len(targets) != logits.shape[0]:
            raise ValueError(
                f"SetCriterion: {logits.shape[0]} predictions but {len(targets)} targets"
            )
        num_masks = self.num_target_masks(targets, logits.device)
        target_masks = None
        uses_masks = "masks" in self.losses or self.matcher.uses_masks
        if uses_masks and all("masks" in t for t in targets):
            # Converted once for every layer's matching and losses (not once per layer and
            # image); the targets' masks become views of it.
            target_masks = self._stacked_target_masks(targets).to(logits.device)
            views = target_masks.split([len(t["masks"]) for t in targets])
            targets = [{**t, "masks": v} if len(v) else t for t, v in zip(targets, views)]
        main = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        losses = self._losses_for(main, targets, num_masks, generator, target_masks)
        if "semantic" in self.losses:
            losses.update(self.loss_semantic(main, targets))
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                aux_losses = self._losses_for(aux, targets, num_masks, generator, target_masks)
                for k, v in aux_losses.items():
                    losses[f"{k}_{i}"] = v
        return losses

    def weight_losses(self, losses: Losses) -> Losses:
        """Multiply every loss by the weight of its base name (``loss_ce_3`` -> ``loss_ce``)."""
        weighted = {}
        for key, value in losses.items():
            base = _SUFFIX.sub("", key)
            if base not in self.weight_dict:
                raise KeyError(f"SetCriterion: no weight for loss {key!r}")
            weighted[key] = value * self.weight_dict[base]
        return weighted
