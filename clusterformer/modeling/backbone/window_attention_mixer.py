"""A non-clustering token mixer for controlled comparisons: self-attention in spatial windows.

Swin-style multi-head self-attention inside the same S x S windows the clustering mixer uses
(no shifted windows, no relative position bias: the coordinate input channels already carry
position). Every token attends to the tokens of its window with a softmax over the *tokens*,
which is the ordinary attention ClusterFormer's clustering replaces. Padded tokens are never
attended to. Selected with ``mixer="window_attention"`` in :class:`ClusterFormerBackbone`.
"""

import torch
from torch import Tensor, nn

from .windows import (
    PointwiseConv2d,
    WindowGeometry,
    partition_windows,
    reverse_windows,
    valid_token_mask,
)


class WindowAttentionMixer(nn.Module):
    """Window multi-head self-attention: (B, dim, H, W) -> (B, dim, H, W).

    Args:
        dim: input/output channels.
        num_heads, head_dim: heads of the Q/K/V projections (inner width num_heads * head_dim).
        window_size: S, windows of S x S tokens (``min(S, H) x min(S, W)`` on smaller maps).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int = 32, window_size: int = 7) -> None:
        super().__init__()
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}.")
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = head_dim**-0.5
        inner = num_heads * head_dim
        self.qkv = PointwiseConv2d(dim, 3 * inner)
        self.proj = PointwiseConv2d(inner, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, dim, H, W) -> (B, dim, H, W)."""
        if x.dim() != 4:
            raise ValueError(f"WindowAttentionMixer expects (B, C, H, W), got {tuple(x.shape)}.")
        H, W = x.shape[-2:]
        geometry = WindowGeometry.for_map(H, W, self.window_size)
        queries, keys, values = partition_windows(
            self.qkv(x), geometry, groups=3, heads=self.num_heads
        ).unbind(0)  # (B, heads, nW, N, d)
        logits = torch.matmul(queries, keys.transpose(-1, -2)) * self.scale  # (B, h, nW, N, N)
        valid = valid_token_mask(geometry, x.device)
        if valid is not None:
            logits = logits.masked_fill(~valid[:, None, :], torch.finfo(logits.dtype).min)
        tokens = torch.matmul(logits.softmax(dim=-1), values)
        return self.proj(reverse_windows(tokens, geometry))
