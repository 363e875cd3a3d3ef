"""Query-level clustering transformer decoder (docs/method.md §2, §3).

``N`` learnable queries are the cluster centres. Each of ``L`` layers visits one scale of the pixel
decoder (lowest resolution first, cycling) and runs

    cross-attention step (recurrent clustering, or masked attention for the ablation)
    -> self-attention among the queries -> FFN.

Every layer's cross-attention is restricted by the previous prediction (the *assignment
restriction*): its masks at pixel level, exactly where Mask2Former puts its attention mask, and
its boxes at box level (each query also carries a box, refined layer by layer). Predictions are
made before the first layer and after every layer by shared heads (deep supervision).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..box_ops import inverse_sigmoid
from ..common_layers import caffe2_xavier_init_
from .assignment_restriction import (
    box_assignment_restriction,
    mask_assignment_restriction,
    resize_like_restriction,
    restrict_within,
)
from .cross_attention import (
    ClusteringCrossAttention,
    MaskedCrossAttention,
    release_empty_restrictions,
)
from .decoder_layers import FFNLayer, SelfAttentionLayer
from .position_encoding import PositionEmbeddingSine
from .prediction_heads import BOX_REFINEMENT_GRADIENTS, PredictionHeads, refine_boxes

CROSS_ATTENTION_CHOICES = ("clustering", "masked_attention")
# Anchor boxes start with random centres and this width / height (normalised canvas units).
INITIAL_ANCHOR_SIZE = 0.5

# Kept importable from here: the pixel-level decoder defined it first.
MaskClassificationHeads = PredictionHeads

__all__ = [
    "CROSS_ATTENTION_CHOICES",
    "ClusteringTransformerDecoder",
    "MaskClassificationHeads",
    "mask_assignment_restriction",
]


class ClusteringTransformerDecoder(nn.Module):
    """Mask-classification / box-detection decoder whose cross-attention step is recurrent
    clustering.

    Args:
        in_channels: channels of the multi-scale features (the pixel decoder's ``conv_dim``).
        num_classes: ``K`` (without "no object").
        hidden_dim: query channels.
        num_queries: ``N`` queries = cluster centres.
        nheads: heads of the cross- and self-attention.
        dim_feedforward: FFN hidden size.
        dec_layers: ``L`` layers (cycling over the levels).
        pre_norm: pre-norm sub-layers.
        mask_dim: channels of the mask features.
        enforce_input_project: 1x1 conv on the features even when ``in_channels == hidden_dim``.
        cross_attention: ``"clustering"`` (default) or ``"masked_attention"``.
        cross_attention_init: the cross-attentions' projection initialisation, ``"packed"``
            (default, Mask2Former's) or ``"separate"`` (see :class:`QueryPixelAttention`;
            the measurement that chose the default: docs/design_choices.md).
        clustering_iterations: ``T`` shared-weight EM iterations per clustering step.
        dropout: dropout of every sub-layer.
        num_feature_levels: number of multi-scale features (3).
        mask_threshold: mask probability above which a pixel stays in a query's restriction.
        restrict_to_masks: use the previous masks as assignment restriction (True, as Mask2Former;
            only where masks are predicted).
        mask_on: build the mask head and predict ``pred_masks`` (pixel level).
        box_on: each query carries a box: learned anchors, a box head, ``pred_boxes``.
        restrict_to_boxes: with ``box_on``, restrict every query's assignment to the tokens
            inside its previous box (ANDed with the mask restriction when that is on).
        box_refinement_gradient: ``"look_forward_twice"`` (DINO) or ``"detach"`` (Deformable
            DETR), see :mod:`.prediction_heads`.
        learn_anchor_boxes: train the anchors. They get a gradient only from the losses of the
            first predictions (before layer 1, and before layer 2 with look-forward-twice): turn
            this off when those are not supervised (no deep supervision), or DDP with
            ``find_unused_parameters=False`` fails on them.
        class_prior_prob: class-bias prior (the sigmoid focal loss wants 0.01); ``None``: default.
        semantic_head: with ``mask_on``, a 1x1 convolution on the mask features that predicts
            per-pixel class logits ``pred_semantic`` in training, for kMaX-DeepLab's auxiliary
            semantic loss (docs/design_choices.md); inference does not use it.
        mask_shape_resolution: with ``mask_on``, ``R > 0`` feeds every query's own mask, cropped
            to its box and resampled to ``R x R``, to its class head
            (:class:`~.prediction_heads.MaskShapeEmbedding`; not in the paper); 0: off.

    Boxes are normalised ``(cx, cy, w, h)`` on the padded canvas the decoder sees (every feature
    level covers it): token ``(i, j)`` of an ``h x w`` level is the cell
    ``[j / w, (j + 1) / w] x [i / h, (i + 1) / h]``.

    ``forward(multi_scale_features, mask_features=None)`` returns a dict:
        * ``pred_logits`` ``(B, Q, K + 1)``, ``pred_masks`` ``(B, Q, H_m, W_m)`` (``mask_on``;
          mask-feature resolution, stride 4) and ``pred_boxes`` ``(B, Q, 4)`` fp32 (``box_on``)
          of the last layer;
        * ``pred_semantic`` ``(B, K, H_m, W_m)`` (training with ``semantic_head`` only);
        * ``aux_outputs``: ``L`` dicts with the same keys, the predictions before layer 1,
          ..., before layer ``L`` (deep supervision). In eval mode they carry no
          ``pred_masks``: an intermediate prediction's masks are then predicted only at the
          resolution of the level they restrict, which is all inference needs (the final
          outputs are the same as in training mode);
        * ``"clustering"``: ``pixel_assignment`` ``(B, Q, h, w)`` fp32, the last layer's final
          E-step assignment averaged over heads, at that layer's level (stride 8 for 9 layers and
          3 levels): sums to 1 over queries at each pixel some query may take, 0 at pixels
          excluded by every query. ``pixel_assignment.argmax(1)`` is the cluster map.
        * ``"masked_attention"``: ``cross_attention_weights`` ``(B, Q, h, w)`` fp32, the last
          layer's attention probabilities averaged over heads (sum to 1 over pixels per query).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 9,
        pre_norm: bool = False,
        mask_dim: int = 256,
        enforce_input_project: bool = False,
        cross_attention: str = "clustering",
        cross_attention_init: str = "packed",
        clustering_iterations: int = 3,
        dropout: float = 0.0,
        num_feature_levels: int = 3,
        mask_threshold: float = 0.5,
        restrict_to_masks: bool = True,
        mask_on: bool = True,
        box_on: bool = False,
        restrict_to_boxes: bool = True,
        box_refinement_gradient: str = "look_forward_twice",
        learn_anchor_boxes: bool = True,
        class_prior_prob: Optional[float] = None,
        semantic_head: bool = False,
        mask_shape_resolution: int = 0,
    ):
        super().__init__()
        name = type(self).__name__
        if cross_attention not in CROSS_ATTENTION_CHOICES:
            raise ValueError(
                f"{name}: cross_attention must be one of {CROSS_ATTENTION_CHOICES}, "
                f"got {cross_attention!r}"
            )
        if dec_layers < 1:
            raise ValueError(f"{name}: dec_layers must be >= 1, got {dec_layers}")
        if hidden_dim % 2 != 0:
            raise ValueError(f"{name}: hidden_dim must be even, got {hidden_dim}")
        if not (mask_on or box_on):
            raise ValueError(f"{name}: predict masks (mask_on), boxes (box_on) or both")
        if semantic_head and not mask_on:
            raise ValueError(f"{name}: semantic_head reads the mask features; it needs mask_on")
        if mask_shape_resolution and not mask_on:
            raise ValueError(f"{name}: mask_shape_resolution reads the masks; it needs mask_on")
        if box_refinement_gradient not in BOX_REFINEMENT_GRADIENTS:
            raise ValueError(
                f"{name}: box_refinement_gradient must be one of {BOX_REFINEMENT_GRADIENTS}, "
                f"got {box_refinement_gradient!r}"
            )
        self.num_queries = num_queries
        self.num_layers = dec_layers
        self.num_feature_levels = num_feature_levels
        self.cross_attention_type = cross_attention
        self.mask_threshold = mask_threshold
        self.mask_on = mask_on
        self.box_on = box_on
        self.restrict_to_masks = restrict_to_masks and mask_on
        self.restrict_to_boxes = restrict_to_boxes and box_on
        self.box_refinement_gradient = box_refinement_gradient
        self.mask_dim = mask_dim

        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                caffe2_xavier_init_(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Identity())

        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if box_on:
            # Learned anchors (logits of cxcywh), the reference of the first box prediction.
            self.anchor_boxes = nn.Embedding(num_queries, 4)
            with torch.no_grad():
                centres = torch.rand(num_queries, 2)
                sizes = torch.full((num_queries, 2), INITIAL_ANCHOR_SIZE)
                self.anchor_boxes.weight.copy_(inverse_sigmoid(torch.cat([centres, sizes], -1)))
            self.anchor_boxes.weight.requires_grad_(learn_anchor_boxes)
        else:
            self.anchor_boxes = None

        def make_cross() -> nn.Module:
            shared = {
                "dropout": dropout,
                "pre_norm": pre_norm,
                "projection_init": cross_attention_init,
            }
            if cross_attention == "clustering":
                return ClusteringCrossAttention(hidden_dim, nheads, clustering_iterations, **shared)
            return MaskedCrossAttention(hidden_dim, nheads, **shared)

        self.cross_attention_layers = nn.ModuleList(make_cross() for _ in range(dec_layers))
        self.self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout=dropout, pre_norm=pre_norm)
            for _ in range(dec_layers)
        )
        self.ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout=dropout, pre_norm=pre_norm)
            for _ in range(dec_layers)
        )
        self.prediction_heads = PredictionHeads(
            hidden_dim,
            num_classes,
            mask_dim if mask_on else None,
            box_on=box_on,
            class_prior_prob=class_prior_prob,
            mask_shape_resolution=mask_shape_resolution,
        )
        self.semantic_head = nn.Conv2d(mask_dim, num_classes, 1) if semantic_head else None

    def assignment_restriction(
        self, predictions: Dict[str, Tensor], size: Sequence[int]
    ) -> Optional[Tensor]:
        """The ``(B, Q, h * w)`` bool restriction for the next layer from the current predictions
        (``None``: unrestricted).

        * masks only: the thresholded mask; a query with an empty mask sees every token;
        * boxes only: the tokens inside the box (never empty for a sigmoid box);
        * both: mask AND box; a query whose mask has no token in its box keeps its box.
        """
        box_allowed = (
            box_assignment_restriction(predictions["pred_boxes"], size)
            if self.restrict_to_boxes
            else None
        )
        mask_allowed = (
            mask_assignment_restriction(predictions["pred_masks"], size, self.mask_threshold)
            if self.restrict_to_masks
            else None
        )
        if box_allowed is None and mask_allowed is None:
            return None
        if box_allowed is None:
            allowed = mask_allowed
        elif mask_allowed is None:
            allowed = box_allowed
        else:
            allowed = restrict_within(box_allowed, mask_allowed)
        return release_empty_restrictions(allowed)

    def _prepare_levels(
        self, features: List[Tensor]
    ) -> Tuple[List[Tensor], List[Tensor], List[Tuple[int, int]]]:
        """Project and flatten each level: tokens ``(B, h*w, C)`` (+ level embedding) and their
        positions ``(B, h*w, C)``."""
        srcs, pos, sizes = [], [], []
        for lvl, x in enumerate(features):
            sizes.append(tuple(x.shape[-2:]))
            pos.append(self.pe_layer(x).flatten(2).transpose(1, 2))
            src = self.input_proj[lvl](x).flatten(2).transpose(1, 2)
            srcs.append(src + self.level_embed.weight[lvl][None, None, :].to(src.dtype))
        return srcs, pos, sizes

    def _predict(
        self, queries: Tensor, mask_features: Optional[Tensor], box_reference: Optional[Tensor]
    ) -> Tuple[Dict[str, Tensor], Optional[Tensor]]:
        """Heads on ``queries``; with boxes, refine ``box_reference`` (logits ``(B, Q, 4)``; the
        anchors when ``None``). Returns the prediction dict and the next box reference."""
        prediction = self.prediction_heads(
            queries, mask_features, predict_masks=mask_features is not None
        )
        if not self.box_on:
            return prediction, None
        deltas = prediction.pop("box_deltas")
        first = box_reference is None
        if first:
            box_reference = self.anchor_boxes.weight[None].expand(queries.shape[0], -1, -1)
        prediction["pred_boxes"], next_reference = refine_boxes(
            box_reference, deltas, first=first, gradient=self.box_refinement_gradient
        )
        return prediction, next_reference

    def forward(
        self, multi_scale_features: List[Tensor], mask_features: Optional[Tensor] = None
    ) -> Dict[str, object]:
        """
        Args:
            multi_scale_features: ``num_feature_levels`` maps ``(B, in_channels, h_l, w_l)``,
                lowest resolution first.
            mask_features: ``(B, mask_dim, H_m, W_m)``; only read with ``mask_on``.

        Returns:
            the dict described in the class docstring.
        """
        name = type(self).__name__
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"{name}: expected {self.num_feature_levels} feature levels, "
                f"got {len(multi_scale_features)}"
            )
        if self.mask_on and (
            mask_features is None
            or mask_features.dim() != 4
            or mask_features.shape[1] != self.mask_dim
        ):
            got = None if mask_features is None else tuple(mask_features.shape)
            raise ValueError(f"{name}: mask_features must be (B, {self.mask_dim}, H, W), got {got}")
        if not self.mask_on:
            mask_features = None
        srcs, pos, sizes = self._prepare_levels(multi_scale_features)
        B = srcs[0].shape[0]
        queries = self.query_feat.weight[None].expand(B, -1, -1)
        query_pos = self.query_embed.weight[None].expand(B, -1, -1)
        levels = self.num_feature_levels
        # Deep supervision reads every prediction's masks at the mask-feature resolution. At
        # inference an intermediate prediction's masks only restrict the next layer, so they are
        # predicted at that layer's level directly: resizing is linear, so resizing the mask
        # features equals resizing the mask logits, at a fraction of the per-pixel products.
        # They are then left out of ``aux_outputs``.
        coarse = self.mask_on and not self.training
        level_mask_features = None
        # The mask-shape embedding reads every prediction's masks, restriction or not.
        shape_on = self.prediction_heads.mask_shape_embed is not None
        if coarse and (self.restrict_to_masks or shape_on):
            level_mask_features = [resize_like_restriction(mask_features, s) for s in sizes]

        def predict(j: int, queries: Tensor, box_reference: Optional[Tensor]):
            """Prediction ``j`` (0: on the initial queries) and the restriction of layer ``j``."""
            last = j == self.num_layers
            features = mask_features
            if coarse and not last:
                features = None if level_mask_features is None else level_mask_features[j % levels]
            prediction, box_reference = self._predict(queries, features, box_reference)
            restriction = (
                None if last else self.assignment_restriction(prediction, sizes[j % levels])
            )
            if coarse and not last:
                prediction.pop("pred_masks", None)
            return prediction, box_reference, restriction

        prediction, box_reference, restriction = predict(0, queries, None)
        predictions = [prediction]
        weights = None
        for i in range(self.num_layers):
            lvl = i % levels
            queries, weights = self.cross_attention_layers[i](
                queries,
                srcs[lvl],
                query_pos,
                pos[lvl],
                restriction,
                return_weights=i == self.num_layers - 1,
            )
            queries = self.self_attention_layers[i](queries, query_pos)
            queries = self.ffn_layers[i](queries)
            prediction, box_reference, restriction = predict(i + 1, queries, box_reference)
            predictions.append(prediction)

        last_level_size = sizes[(self.num_layers - 1) % self.num_feature_levels]
        weights_key = (
            "pixel_assignment"
            if self.cross_attention_type == "clustering"
            else "cross_attention_weights"
        )
        out: Dict[str, object] = dict(predictions[-1])
        out["aux_outputs"] = predictions[:-1]
        if self.semantic_head is not None and self.training:
            out["pred_semantic"] = self.semantic_head(mask_features)
        out[weights_key] = weights.reshape(B, self.num_queries, *last_level_size)
        return out
