"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021).

Shapes used throughout (Deformable-DETR notation):

* ``value``: ``(N, S, M, D)``, ``S = sum_l H_l * W_l`` flattened tokens of all levels, ``M`` heads,
  ``D`` channels per head;
* ``spatial_shapes``: ``(L, 2)`` int64, ``(H_l, W_l)`` of each level;
* ``level_start_index``: ``(L,)`` int64, offset of each level in ``S``;
* ``sampling_locations``: ``(N, Lq, M, L, P, 2)``, ``(x, y)`` normalised to ``[0, 1]`` over each
  level (pixel centres at ``(i + 0.5) / W``, the ``align_corners=False`` convention);
* ``attention_weights``: ``(N, Lq, M, L, P)``;
* output: ``(N, Lq, M * D)``.

Samples outside a level read zeros (bilinear interpolation with zero padding).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ms_deform_attn_pytorch(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Reference implementation with ``grid_sample``; see the module docstring for shapes."""
    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_per_level = value.split(sizes, dim=1)
    # grid_sample wants coordinates in [-1, 1].
    grids = 2.0 * sampling_locations - 1.0
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = value_per_level[lvl].flatten(2).transpose(1, 2).reshape(N * M, D, int(h), int(w))
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (N*M, D, Lq, L, P) weighted by (N*M, 1, Lq, L, P), summed over levels and points.
    stacked = torch.stack(sampled, dim=-2)
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L, P)
    out = (stacked * weights).sum(dim=(-1, -2))
    return out.view(N, M * D, Lq).transpose(1, 2).contiguous()


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention, dispatched to the fastest implementation available."""
    return ms_deform_attn_pytorch(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module with Deformable DETR's initialisation.

    Args:
        d_model: channels of queries and values; must be divisible by ``n_heads``.
        n_levels: number of feature levels.
        n_heads: attention heads.
        n_points: sampling points per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(
                f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})"
            )
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        # Each head starts looking in its own direction, point k at distance k (in level pixels).
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: ``(N, Lq, C)``.
            reference_points: ``(N, Lq, L, 2)`` normalised ``(x, y)`` in ``[0, 1]``, or
                ``(N, Lq, L, 4)`` boxes ``(cx, cy, w, h)`` whose size scales the offsets.
            input_flatten: ``(N, S, C)`` tokens of all levels.
            input_spatial_shapes: ``(L, 2)`` int64 ``(H_l, W_l)``.
            input_level_start_index: ``(L,)`` int64.
            input_padding_mask: ``(N, S)`` bool, True at padded tokens (they are zeroed).

        Returns:
            ``(N, Lq, C)``.
        """
        N, Lq, C = query.shape
        S = input_flatten.shape[1]
        if C != self.d_model or input_flatten.shape[2] != self.d_model:
            raise ValueError(
                f"MSDeformAttn: expected {self.d_model} channels, got query {tuple(query.shape)} "
                f"and input {tuple(input_flatten.shape)}"
            )
        expected_tokens = int((input_spatial_shapes[:, 0] * input_spatial_shapes[:, 1]).sum())
        if expected_tokens != S:
            raise ValueError(
                f"MSDeformAttn: input has {S} tokens but spatial shapes "
                f"{input_spatial_shapes.tolist()} describe {expected_tokens}"
            )
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(N, S, M, C // M)
        offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        weights = (
            self.attention_weights(query).view(N, Lq, M, L * P).softmax(-1).view(N, Lq, M, L, P)
        )
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: normalise by (W_l, H_l).
            normalizer = torch.stack(
                [input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1
            )
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[
                None, None, None, :, None, :
            ].to(offsets.dtype)
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                "MSDeformAttn: reference_points must end in 2 (points) or 4 (boxes), got "
                f"{tuple(reference_points.shape)}"
            )
        out = ms_deform_attn(
            value, input_spatial_shapes, input_level_start_index, locations, weights
        )
        return self.output_proj(out)
