"""Per-query prediction heads shared by every decoder layer, and iterative box refinement.

Heads (after one LayerNorm of the queries):

* class logits ``(B, Q, K + 1)`` (the last is "no object"; unused by the sigmoid focal loss);
* mask logits ``(B, Q, H, W)`` = ``<MLP(q), mask_features[:, :, y, x]>`` (pixel level);
* box deltas ``(B, Q, 4)`` = ``MLP(q)`` in logit space (box level), turned into boxes by
  :func:`refine_boxes`.

Box refinement (Deformable-DETR / DINO): the box of prediction ``l`` is the box of prediction
``l - 1`` moved in logit space, ``b_l = sigmoid(inverse_sigmoid(b_{l-1}) + delta_l)``; the first
prediction refines learned per-query anchors. The running box is kept as logits, which is the
same arithmetic without ``inverse_sigmoid``'s clamp. Between layers the reference is detached;
``gradient`` picks what the loss of prediction ``l`` reaches:

* ``"detach"`` (Deformable DETR): ``delta_l`` only;
* ``"look_forward_twice"`` (DINO): ``delta_l`` and ``delta_{l-1}`` (the undetached previous box
  enters prediction ``l``; the chain passed on is detached, so it stops there). Same values.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..common_layers import MLP

BOX_REFINEMENT_GRADIENTS = ("detach", "look_forward_twice")


def refine_boxes(
    reference_logits: Tensor, deltas: Tensor, *, first: bool, gradient: str
) -> Tuple[Tensor, Tensor]:
    """One refinement step, in fp32.

    Args:
        reference_logits: ``(B, Q, 4)`` logits of the previous box (the anchors for the first
            prediction), carrying the gradient of its own step only.
        deltas: ``(B, Q, 4)`` box-head output of this prediction.
        first: the reference is the learned anchors (never detached: they learn from the first
            prediction's loss).
        gradient: ``"detach"`` or ``"look_forward_twice"`` (module docstring).

    Returns:
        ``pred_boxes`` ``(B, Q, 4)`` normalised cxcywh for the loss, and the logits to pass on as
        the next reference.
    """
    if gradient not in BOX_REFINEMENT_GRADIENTS:
        raise ValueError(
            f"refine_boxes: gradient must be one of {BOX_REFINEMENT_GRADIENTS}, got {gradient!r}"
        )
    reference_logits, deltas = reference_logits.float(), deltas.float()
    next_logits = (reference_logits if first else reference_logits.detach()) + deltas
    if gradient == "detach" or first:
        return next_logits.sigmoid(), next_logits
    return (reference_logits + deltas).sigmoid(), next_logits


class PredictionHeads(nn.Module):
    """Class, optional mask and optional box heads on the queries (see the module docstring).

    Args:
        hidden_dim: query channels.
        num_classes: ``K`` (the class head outputs ``K + 1`` logits).
        mask_dim: channels of the mask features; ``None``: no mask head.
        box_on: build the box head.
        mask_embed_layers, box_embed_layers: MLP depths (3 as Mask2Former / DETR).
        class_prior_prob: initialise the class biases to ``-log((1 - p) / p)`` (the focal-loss
            prior of RetinaNet / DETR-family detectors); ``None``: PyTorch's default.

    ``forward(queries (B, Q, C), mask_features (B, mask_dim, H, W) or None)`` returns
    ``pred_logits``, and ``pred_masks`` / ``box_deltas`` (fp32) when those heads exist.
    """

    def __init__(
        self,
        hidden_dim: int,
        num_classes: int,
        mask_dim: Optional[int] = None,
        *,
        box_on: bool = False,
        mask_embed_layers: int = 3,
        box_embed_layers: int = 3,
        class_prior_prob: Optional[float] = None,
    ):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        if class_prior_prob is not None:
            if not 0.0 < class_prior_prob < 1.0:
                raise ValueError(
                    f"PredictionHeads: class_prior_prob must be in (0, 1), got {class_prior_prob}"
                )
            nn.init.constant_(
                self.class_embed.bias, -math.log((1 - class_prior_prob) / class_prior_prob)
            )
        self.mask_embed = (
            MLP(hidden_dim, hidden_dim, mask_dim, mask_embed_layers)
            if mask_dim is not None
            else None
        )
        self.box_embed = MLP(hidden_dim, hidden_dim, 4, box_embed_layers) if box_on else None
        if self.box_embed is not None:
            # Zero deltas at the start: every prediction starts at its reference box.
            nn.init.zeros_(self.box_embed.layers[-1].weight)
            nn.init.zeros_(self.box_embed.layers[-1].bias)

    def forward(
        self,
        queries: Tensor,
        mask_features: Optional[Tensor] = None,
        *,
        predict_masks: bool = True,
    ) -> Dict[str, Tensor]:
        """``predict_masks=False`` skips the mask head (a prediction whose masks nobody reads)."""
        normed = self.norm(queries)
        out = {"pred_logits": self.class_embed(normed)}
        if self.mask_embed is not None and predict_masks:
            if mask_features is None:
                raise ValueError("PredictionHeads: the mask head needs mask_features")
            out["pred_masks"] = torch.einsum(
                "bqc,bchw->bqhw", self.mask_embed(normed), mask_features
            )
        if self.box_embed is not None:
            out["box_deltas"] = self.box_embed(normed).float()
        return out
