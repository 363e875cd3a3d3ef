"""Multi-scale deformable-attention pixel decoder (Mask2Former's design, written for this project).

Backbone features at strides 8/16/32 are projected to ``conv_dim`` channels and refined jointly by a
deformable-attention transformer encoder (every token attends to a few sampled points of every
level). A feature-pyramid path then adds the stride-4 backbone feature to the upsampled stride-8
encoder output, and a 1x1 conv makes the per-pixel mask embedding.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common_layers import ConvNormAct, caffe2_xavier_init_, xavier_init_matrices_
from ..ops import MSDeformAttn
from ..transformer_decoder.position_encoding import PositionEmbeddingSine


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: ``x = LN(x + MSDeformAttn(x + pos))``, ``x = LN(x + FFN(x))``.

    Shapes: ``src``/``pos`` ``(B, S, C)`` over the ``S`` flattened tokens of all levels.
    """

    def __init__(
        self,
        d_model: int = 256,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        n_levels: int = 3,
        n_heads: int = 8,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout_attn = nn.Dropout(dropout)
        self.norm_attn = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout_ffn_hidden = nn.Dropout(dropout)
        self.dropout_ffn = nn.Dropout(dropout)
        self.norm_ffn = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
    ) -> Tensor:
        attended = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index
        )
        src = self.norm_attn(src + self.dropout_attn(attended))
        hidden = self.dropout_ffn_hidden(F.relu(self.linear1(src)))
        return self.norm_ffn(src + self.dropout_ffn(self.linear2(hidden)))


class DeformableTransformerEncoder(nn.Module):
    """A stack of :class:`DeformableEncoderLayer` over ``n_levels`` feature maps of any size.

    Learned level embeddings are added to the positional embeddings so that tokens of different
    levels at the same position stay distinguishable.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_heads: int = 8,
        num_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        n_levels: int = 3,
        n_points: int = 4,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model, dim_feedforward, dropout, n_levels, n_heads, n_points)
            for _ in range(num_layers)
        )
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.n_levels = n_levels
        self.reset_parameters()

    def reset_parameters(self) -> None:
        xavier_init_matrices_(self)
        # MSDeformAttn's own initialisation (directional offsets, uniform weights) must win.
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def reference_points(spatial_shapes: Sequence[Tuple[int, int]], device: torch.device) -> Tensor:
        """Pixel centres of every level, normalised to ``[0, 1]``: ``(1, S, L, 2)`` as ``(x, y)``.

        The same normalised point is used on every level (no padding: valid ratios are 1).
        """
        points = []
        for h, w in spatial_shapes:
            ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
            xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1))
        flat = torch.cat(points, dim=0)
        return flat[None, :, None, :].expand(1, -1, len(spatial_shapes), -1)

    def forward(self, srcs: List[Tensor], pos_embeds: List[Tensor]) -> List[Tensor]:
        """
        Args:
            srcs: ``n_levels`` maps ``(B, C, H_l, W_l)``.
            pos_embeds: matching ``(B, C, H_l, W_l)`` positional embeddings.

        Returns:
            the refined maps, same shapes and order as ``srcs``.
        """
        if len(srcs) != self.n_levels:
            raise ValueError(
                f"DeformableTransformerEncoder: expected {self.n_levels} levels, got {len(srcs)}"
            )
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], dim=1)
        pos_flat = torch.cat(
            [
                p.flatten(2).transpose(1, 2) + self.level_embed[lvl].to(p.dtype)[None, None, :]
                for lvl, p in enumerate(pos_embeds)
            ],
            dim=1,
        )
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flat.device)
        sizes = spatial_shapes.prod(1)
        level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        reference = self.reference_points(shapes, src_flat.device).to(src_flat.dtype)
        reference = reference.expand(src_flat.shape[0], -1, -1, -1)
        out = src_flat
        for layer in self.layers:
            out = layer(out, pos_flat, reference, spatial_shapes, level_start_index)
        B, _, C = out.shape
        return [
            chunk.transpose(1, 2).reshape(B, C, h, w)
            for chunk, (h, w) in zip(out.split([h * w for h, w in shapes], dim=1), shapes)
        ]


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder: deformable-attention encoder over the coarse levels + FPN to common_stride.

    Args:
        input_channels: channels of each backbone feature, e.g. ``{"res2": 96, ..., "res5": 768}``.
        input_strides: stride of each backbone feature, e.g. ``{"res2": 4, ..., "res5": 32}``.
        in_features: the features to use (default: all keys of ``input_channels``).
        transformer_in_features: the features refined by the deformable encoder
            (default ``["res3", "res4", "res5"]``).
        conv_dim: channels inside the decoder (``MODEL.SEM_SEG_HEAD.CONVS_DIM``).
        mask_dim: channels of the per-pixel mask embedding (``MODEL.SEM_SEG_HEAD.MASK_DIM``).
        norm: norm of the FPN convs (``"GN"``: GroupNorm(32)); see ``build_norm``.
        common_stride: stride of the mask features (4).
        num_layers, n_heads, n_points, dim_feedforward, dropout: the deformable encoder.
        num_feature_levels: how many multi-scale maps go to the transformer decoder (3).
        mask_features_on: build the FPN path and the mask-feature conv. A box-only decoder reads
            no mask features: without them the module has no parameter the loss cannot reach
            (DDP's ``find_unused_parameters=False``), and ``in_features`` beyond the
            transformer's are not read.

    ``forward(features)`` returns ``(mask_features, multi_scale_features)``:
        * ``mask_features``: ``(B, mask_dim, H_s, W_s)`` at ``common_stride`` (the size of the
          backbone feature of that stride); ``None`` without ``mask_features_on``;
        * ``multi_scale_features``: ``num_feature_levels`` maps ``(B, conv_dim, h, w)``, lowest
          resolution first (strides 32, 16, 8 by default).
    """

    def __init__(
        self,
        input_channels: Dict[str, int],
        input_strides: Dict[str, int],
        *,
        in_features: Optional[Sequence[str]] = None,
        transformer_in_features: Sequence[str] = ("res3", "res4", "res5"),
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: Optional[str] = "GN",
        common_stride: int = 4,
        num_layers: int = 6,
        n_heads: int = 8,
        n_points: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        num_feature_levels: int = 3,
        mask_features_on: bool = True,
    ):
        super().__init__()
        in_features = list(input_channels) if in_features is None else list(in_features)
        for name in list(in_features) + list(transformer_in_features):
            if name not in input_channels or name not in input_strides:
                raise ValueError(
                    f"MSDeformAttnPixelDecoder: feature {name!r} missing from input_channels "
                    f"{sorted(input_channels)} or input_strides {sorted(input_strides)}"
                )
        missing = set(transformer_in_features) - set(in_features)
        if missing:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: transformer_in_features {sorted(missing)} are not in "
                f"in_features {in_features}"
            )
        # Finest first for the FPN; coarsest first for the encoder (Mask2Former's order).
        self.in_features = sorted(in_features, key=lambda k: input_strides[k])
        self.transformer_in_features = sorted(
            transformer_in_features, key=lambda k: -input_strides[k]
        )
        if num_feature_levels > len(self.transformer_in_features):
            raise ValueError(
                f"MSDeformAttnPixelDecoder: num_feature_levels={num_feature_levels} exceeds the "
                f"{len(self.transformer_in_features)} transformer levels"
            )
        self.num_feature_levels = num_feature_levels
        self.common_stride = common_stride
        self.conv_dim = conv_dim
        self.mask_dim = mask_dim
        self.mask_features_on = mask_features_on

        if conv_dim % 32 != 0:
            raise ValueError(
                "MSDeformAttnPixelDecoder: conv_dim must be divisible by 32 (GroupNorm), got "
                f"{conv_dim}"
            )
        self.input_proj = nn.ModuleList()
        for name in self.transformer_in_features:
            proj = nn.Sequential(
                nn.Conv2d(input_channels[name], conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim)
            )
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
            self.input_proj.append(proj)

        self.encoder = DeformableTransformerEncoder(
            d_model=conv_dim,
            n_heads=n_heads,
            num_layers=num_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            n_levels=len(self.transformer_in_features),
            n_points=n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        if not mask_features_on:
            self.fpn_features = []
            self.lateral_convs = nn.ModuleList()
            self.output_convs = nn.ModuleList()
            self.mask_features = None
            return
        # FPN levels: the features finer than the encoder's finest level, down to common_stride.
        finest_transformer_stride = min(input_strides[k] for k in self.transformer_in_features)
        if common_stride > finest_transformer_stride:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: common_stride {common_stride} is coarser than the "
                "finest "
                f"transformer level (stride {finest_transformer_stride})"
            )
        self.fpn_features = [
            k
            for k in self.in_features
            if common_stride <= input_strides[k] < finest_transformer_stride
        ]
        expected_fpn = int(round(math.log2(finest_transformer_stride) - math.log2(common_stride)))
        if len(self.fpn_features) != expected_fpn:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: need one feature per stride from {common_stride} up to "
                f"{finest_transformer_stride} (exclusive), got {self.fpn_features}"
            )
        # Coarse-to-fine processing order.
        self.fpn_features = self.fpn_features[::-1]
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(input_channels[k], conv_dim, kernel_size=1, norm=norm)
            for k in self.fpn_features
        )
        self.output_convs = nn.ModuleList(
            ConvNormAct(conv_dim, conv_dim, kernel_size=3, norm=norm, activation="relu")
            for _ in self.fpn_features
        )
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        caffe2_xavier_init_(self.mask_features)

    def forward(self, features: Dict[str, Tensor]) -> Tuple[Optional[Tensor], List[Tensor]]:
        """
        Args:
            features: backbone maps ``{name: (B, C_name, H_name, W_name)}``; sizes may be odd or
                not exact multiples of each other (every resize goes to the target's exact size).

        Returns:
            ``(mask_features, multi_scale_features)``, see the class docstring.
        """
        needed = self.in_features if self.mask_features_on else self.transformer_in_features
        for name in needed:
            if name not in features:
                raise KeyError(
                    f"MSDeformAttnPixelDecoder: feature {name!r} missing; got {sorted(features)}"
                )
        # The backbone's maps are channels_last; in the standard layout, GroupNorm's backward on
        # CPU is 6x faster in torch 2.3 and the 1x1 convolutions take the oneDNN path
        # (docs/benchmarks.md, training step), for one copy of each map.
        features = {name: features[name].contiguous() for name in needed}
        srcs, pos = [], []
        for proj, name in zip(self.input_proj, self.transformer_in_features):
            x = features[name]
            srcs.append(proj(x))
            pos.append(self.pe_layer(srcs[-1]))
        out = self.encoder(srcs, pos)

        for name, lateral, output in zip(self.fpn_features, self.lateral_convs, self.output_convs):
            lat = lateral(features[name])
            up = F.interpolate(out[-1], size=lat.shape[-2:], mode="bilinear", align_corners=False)
            out.append(output(lat + up))

        if self.mask_features is None:
            return None, out[: self.num_feature_levels]
        return self.mask_features(out[-1]), out[: self.num_feature_levels]
