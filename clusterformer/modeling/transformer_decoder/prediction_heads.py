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
import torch.nn.functional as F
from torch import Tensor, nn

from ..box_ops import masks_to_boxes
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


def mask_box_crops(mask_logits: Tensor, resolution: int, threshold: float = 0.5) -> Tensor:
    """Each mask's probabilities resampled inside its own bounding box.

    Args:
        mask_logits: ``(B, Q, H, W)``.
        resolution: ``R``, the side of the crops.
        threshold: probability above which a pixel is in the mask (its box is the box of these
            pixels; a mask without one gets the whole canvas).

    Returns:
        ``(B, Q, R, R)`` fp32, without gradient: the shape of every mask, whatever its position
        and size (bilinear sampling, ``align_corners=False``).
    """
    B, Q, H, W = mask_logits.shape
    probs = mask_logits.detach().float().sigmoid().reshape(B * Q, 1, H, W)
    inside = probs[:, 0] > threshold  # (N, H, W)
    boxes = masks_to_boxes(inside)  # (N, 4) xyxy pixel edges, zeros for an empty mask
    empty = boxes[:, 2] == 0  # a non-empty mask's right edge is at least 1
    canvas = torch.tensor([0.0, 0.0, W, H], device=boxes.device)
    boxes = torch.where(empty[:, None], canvas, boxes)
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    # Box centre and half-size in grid_sample's [-1, 1] coordinates.
    cx, sx = (x0 + x1) / W - 1.0, (x1 - x0) / W
    cy, sy = (y0 + y1) / H - 1.0, (y1 - y0) / H
    # The grid of F.affine_grid(theta = [[sx, 0, cx], [0, sy, cy]], align_corners=False), written
    # out: the same base coordinates (its linspace), and ONNX has no affine_grid before opset 20.
    base = torch.linspace(-1.0, 1.0, resolution, device=probs.device)
    base = base * (resolution - 1) / resolution
    grid_x = sx[:, None] * base + cx[:, None]  # (N, R): x of each output column
    grid_y = sy[:, None] * base + cy[:, None]  # (N, R): y of each output row
    grid = torch.stack(
        [
            grid_x[:, None, :].expand(-1, resolution, -1),
            grid_y[:, :, None].expand(-1, -1, resolution),
        ],
        dim=-1,
    )  # (N, R, R, 2)
    crops = F.grid_sample(probs, grid, mode="bilinear", align_corners=False)
    return crops.reshape(B, Q, resolution, resolution)


class MaskShapeEmbedding(nn.Module):
    """A query's own predicted mask, box-normalised, as an input of its class head.

    ``MLP(flatten(mask_box_crops(masks)))`` is added to the normalised query before the class
    head. The crops carry no gradient (the class loss does not reshape the masks), and the last
    layer starts at zero, so an untrained embedding leaves the class logits as without it. Not
    part of the paper (docs/design_choices.md): where the classes differ by outline only, the
    pooled features that reach a query say little about its outline while its mask shows it.

    Args:
        hidden_dim: query channels.
        resolution: side ``R`` of the crops (``R * R`` inputs).

    ``forward(mask_logits (B, Q, H, W)) -> (B, Q, hidden_dim)``.
    """

    def __init__(self, hidden_dim: int, resolution: int = 16):
        super().__init__()
        if resolution < 2:
            raise ValueError(f"MaskShapeEmbedding: resolution must be >= 2, got {resolution}")
        self.resolution = resolution
        self.mlp = MLP(resolution * resolution, hidden_dim, hidden_dim, 2)
        nn.init.zeros_(self.mlp.layers[-1].weight)
        nn.init.zeros_(self.mlp.layers[-1].bias)

    def forward(self, mask_logits: Tensor) -> Tensor:
        crops = mask_box_crops(mask_logits, self.resolution)
        return self.mlp(crops.flatten(2))


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
        mask_shape_resolution: ``R > 0`` adds a :class:`MaskShapeEmbedding` of the query's own
            mask (``R x R`` crops) to the class head's input; 0: off (the paper). Needs the mask
            head, and masks at every prediction.

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
        mask_shape_resolution: int = 0,
    ):
        super().__init__()
        if mask_shape_resolution and mask_dim is None:
            raise ValueError("PredictionHeads: mask_shape_resolution needs the mask head")
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
        self.mask_shape_embed = (
            MaskShapeEmbedding(hidden_dim, mask_shape_resolution) if mask_shape_resolution else None
        )
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
        """``predict_masks=False`` skips the mask head (a prediction whose masks nobody reads);
        with the mask-shape embedding the class head reads the masks, so they are predicted."""
        normed = self.norm(queries)
        out = {}
        if self.mask_embed is not None and (predict_masks or self.mask_shape_embed is not None):
            if mask_features is None:
                raise ValueError("PredictionHeads: the mask head needs mask_features")
            out["pred_masks"] = torch.einsum(
                "bqc,bchw->bqhw", self.mask_embed(normed), mask_features
            )
        class_input = normed
        if self.mask_shape_embed is not None:
            class_input = normed + self.mask_shape_embed(out["pred_masks"]).to(normed.dtype)
        out["pred_logits"] = self.class_embed(class_input)
        if self.box_embed is not None:
            out["box_deltas"] = self.box_embed(normed).float()
        return out
