"""Query-level clustering transformer decoder (method.md §2).

``N`` learnable queries are the cluster centres. Each of ``L`` layers visits one scale of the pixel
decoder (lowest resolution first, cycling) and runs

    cross-attention step (recurrent clustering, or masked attention for the ablation)
    -> self-attention among the queries -> FFN.

Every layer's cross-attention is restricted by the previous prediction's masks (the *assignment
restriction*), exactly where Mask2Former puts its attention mask. Predictions are made before the
first layer and after every layer by shared heads (deep supervision).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common_layers import MLP, caffe2_xavier_init_
from .cross_attention import (
    ClusteringCrossAttention,
    MaskedCrossAttention,
    release_empty_restrictions,
)
from .decoder_layers import FFNLayer, SelfAttentionLayer
from .position_encoding import PositionEmbeddingSine

CROSS_ATTENTION_CHOICES = ("clustering", "masked_attention")


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
    resized = F.interpolate(
        mask_logits.detach().float(), size=tuple(size), mode="bilinear", align_corners=False
    )
    return (resized.sigmoid() >= threshold).flatten(2)


class MaskClassificationHeads(nn.Module):
    """Per-query predictions shared by all layers: ``LN`` -> class logits and mask logits.

    * ``pred_logits``: ``(B, Q, num_classes + 1)``, the last class is "no object";
    * ``pred_masks``: ``(B, Q, H, W)`` = ``<MLP(q), mask_features[:, :, y, x]>``.
    """

    def __init__(
        self, hidden_dim: int, num_classes: int, mask_dim: int, mask_embed_layers: int = 3
    ):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, mask_embed_layers)

    def forward(self, queries: Tensor, mask_features: Tensor) -> Dict[str, Tensor]:
        """``queries`` ``(B, Q, C)``, ``mask_features`` ``(B, mask_dim, H, W)``."""
        normed = self.norm(queries)
        mask_embed = self.mask_embed(normed)
        return {
            "pred_logits": self.class_embed(normed),
            "pred_masks": torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features),
        }


class ClusteringTransformerDecoder(nn.Module):
    """Mask-classification decoder whose cross-attention step is recurrent clustering.

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
        clustering_iterations: ``T`` shared-weight EM iterations per clustering step.
        dropout: dropout of every sub-layer.
        num_feature_levels: number of multi-scale features (3).
        mask_threshold: mask probability above which a pixel stays in a query's restriction.
        restrict_to_masks: use the previous masks as assignment restriction (True, as Mask2Former).

    ``forward(multi_scale_features, mask_features)`` returns a dict:
        * ``pred_logits`` ``(B, Q, K + 1)`` and ``pred_masks`` ``(B, Q, H_m, W_m)`` (mask-feature
          resolution, stride 4) of the last layer;
        * ``aux_outputs``: ``L`` dicts with the same two keys, the predictions before layer 1,
          ..., before layer ``L`` (deep supervision);
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
        clustering_iterations: int = 3,
        dropout: float = 0.0,
        num_feature_levels: int = 3,
        mask_threshold: float = 0.5,
        restrict_to_masks: bool = True,
    ):
        super().__init__()
        if cross_attention not in CROSS_ATTENTION_CHOICES:
            raise ValueError(
                "ClusteringTransformerDecoder: cross_attention must be one of "
                f"{CROSS_ATTENTION_CHOICES}, "
                f"got {cross_attention!r}"
            )
        if dec_layers < 1:
            raise ValueError(
                f"ClusteringTransformerDecoder: dec_layers must be >= 1, got {dec_layers}"
            )
        if hidden_dim % 2 != 0:
            raise ValueError(
                f"ClusteringTransformerDecoder: hidden_dim must be even, got {hidden_dim}"
            )
        self.num_queries = num_queries
        self.num_layers = dec_layers
        self.num_feature_levels = num_feature_levels
        self.cross_attention_type = cross_attention
        self.mask_threshold = mask_threshold
        self.restrict_to_masks = restrict_to_masks
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

        def make_cross() -> nn.Module:
            if cross_attention == "clustering":
                return ClusteringCrossAttention(
                    hidden_dim, nheads, clustering_iterations, dropout=dropout, pre_norm=pre_norm
                )
            return MaskedCrossAttention(hidden_dim, nheads, dropout=dropout, pre_norm=pre_norm)

        self.cross_attention_layers = nn.ModuleList(make_cross() for _ in range(dec_layers))
        self.self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout=dropout, pre_norm=pre_norm)
            for _ in range(dec_layers)
        )
        self.ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout=dropout, pre_norm=pre_norm)
            for _ in range(dec_layers)
        )
        self.prediction_heads = MaskClassificationHeads(hidden_dim, num_classes, mask_dim)

    def assignment_restriction(
        self, predictions: Dict[str, Tensor], size: Sequence[int]
    ) -> Optional[Tensor]:
        """The ``(B, Q, h * w)`` bool restriction for the next layer from the current predictions.

        This is the single place where restrictions are made: a box-level variant ANDs its box
        restriction here before the empty-query release.
        """
        if not self.restrict_to_masks:
            return None
        allowed = mask_assignment_restriction(predictions["pred_masks"], size, self.mask_threshold)
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

    def forward(
        self, multi_scale_features: List[Tensor], mask_features: Tensor
    ) -> Dict[str, object]:
        """
        Args:
            multi_scale_features: ``num_feature_levels`` maps ``(B, in_channels, h_l, w_l)``,
                lowest resolution first.
            mask_features: ``(B, mask_dim, H_m, W_m)``.

        Returns:
            the dict described in the class docstring.
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"ClusteringTransformerDecoder: expected {self.num_feature_levels} feature levels, "
                f"got {len(multi_scale_features)}"
            )
        if mask_features.dim() != 4 or mask_features.shape[1] != self.mask_dim:
            raise ValueError(
                f"ClusteringTransformerDecoder: mask_features must be (B, {self.mask_dim}, H, W), "
                f"got {tuple(mask_features.shape)}"
            )
        srcs, pos, sizes = self._prepare_levels(multi_scale_features)
        B = mask_features.shape[0]
        queries = self.query_feat.weight[None].expand(B, -1, -1)
        query_pos = self.query_embed.weight[None].expand(B, -1, -1)

        predictions = [self.prediction_heads(queries, mask_features)]
        restriction = self.assignment_restriction(predictions[-1], sizes[0])
        weights = None
        for i in range(self.num_layers):
            lvl = i % self.num_feature_levels
            is_last = i == self.num_layers - 1
            queries, weights = self.cross_attention_layers[i](
                queries, srcs[lvl], query_pos, pos[lvl], restriction, return_weights=is_last
            )
            queries = self.self_attention_layers[i](queries, query_pos)
            queries = self.ffn_layers[i](queries)
            predictions.append(self.prediction_heads(queries, mask_features))
            if not is_last:
                restriction = self.assignment_restriction(
                    predictions[-1], sizes[(i + 1) % self.num_feature_levels]
                )

        last_level_size = sizes[(self.num_layers - 1) % self.num_feature_levels]
        weights_key = (
            "pixel_assignment"
            if self.cross_attention_type == "clustering"
            else "cross_attention_weights"
        )
        out: Dict[str, object] = dict(predictions[-1])
        out["aux_outputs"] = predictions[:-1]
        out[weights_key] = weights.reshape(B, self.num_queries, *last_level_size)
        return out
