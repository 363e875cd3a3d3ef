"""Sine positional embedding of a feature map (DETR / Mask2Former convention)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine/cosine embedding of pixel positions.

    Channel ``2i`` of each half is ``sin(p / T^(2i/F))``, channel ``2i+1`` is ``cos(p / T^(2i/F))``
    with ``F = num_pos_feats``; the first half encodes the row ``y``, the second the column ``x``.
    Positions are 1-based counts of valid (non-padded) pixels; with ``normalize`` they are divided
    by the valid extent and multiplied by ``scale`` (2π), so that the embedding does not depend on
    the feature-map size.

    Args:
        num_pos_feats: channels per axis; the output has ``2 * num_pos_feats`` channels.
        temperature: ``T`` above.
        normalize: scale positions to ``(0, scale]``.
        scale: only with ``normalize``; default ``2π``.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: Optional[float] = None,
    ):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            x: ``(B, C, H, W)``; only its shape, device and dtype are used.
            mask: optional ``(B, H, W)`` bool, True at padded pixels (they do not count).

        Returns:
            ``(B, 2 * num_pos_feats, H, W)`` in ``x.dtype``.
        """
        B, _, H, W = x.shape
        if mask is None:
            valid = torch.ones(1, H, W, device=x.device, dtype=torch.float32)
        else:
            if mask.shape != (B, H, W):
                raise ValueError(
                    f"PositionEmbeddingSine: mask must be {(B, H, W)}, got {tuple(mask.shape)}"
                )
            valid = (~mask.bool()).to(torch.float32)
        y = valid.cumsum(1)
        x_pos = valid.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y = y / (y[:, -1:, :] + eps) * self.scale
            x_pos = x_pos / (x_pos[:, :, -1:] + eps) * self.scale
        idx = torch.arange(self.num_pos_feats, device=x.device, dtype=torch.float32)
        inv_freq = self.temperature ** (
            2 * torch.div(idx, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_y = y[..., None] / inv_freq
        pos_x = x_pos[..., None] / inv_freq
        # Interleave sin (even channels) and cos (odd channels).
        pos_y = torch.stack([pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()], dim=4).flatten(3)
        pos_x = torch.stack([pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()], dim=4).flatten(3)
        pos = torch.cat([pos_y, pos_x], dim=3).permute(0, 3, 1, 2)
        return pos.expand(B, -1, -1, -1).to(x.dtype)
