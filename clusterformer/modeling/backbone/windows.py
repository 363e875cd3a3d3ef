"""Spatial windows for the token mixers: geometry, partition, reverse, centre pooling, and the
tokens-last 1x1 convolution the backbone uses around them.

A feature map of H x W tokens is cut into non-overlapping windows of ``wh x ww`` tokens, where
``wh = min(S, H)`` and ``ww = min(S, W)`` for the window size S: a map smaller than S in a
dimension gets one window covering that dimension (no padding of a tiny map up to S). The map is
zero-padded on the bottom and right to a multiple of the window; padded tokens are flagged
invalid so the clustering can ignore them. Windows are ordered row-major over the window grid
(window index = row * windows_per_row + column); tokens inside a window are row-major too.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class WindowGeometry:
    """How an ``height x width`` map is tiled by windows of ``window_h x window_w`` tokens."""

    height: int
    width: int
    window_h: int
    window_w: int
    windows_h: int  # number of window rows
    windows_w: int  # number of window columns

    @classmethod
    def for_map(cls, height: int, width: int, window_size: int) -> "WindowGeometry":
        if height < 1 or width < 1:
            raise ValueError(f"Cannot window an empty feature map of size {height}x{width}.")
        window_h, window_w = min(window_size, height), min(window_size, width)
        return cls(
            height=height,
            width=width,
            window_h=window_h,
            window_w=window_w,
            windows_h=math.ceil(height / window_h),
            windows_w=math.ceil(width / window_w),
        )

    @property
    def padded_height(self) -> int:
        return self.windows_h * self.window_h

    @property
    def padded_width(self) -> int:
        return self.windows_w * self.window_w

    @property
    def num_windows(self) -> int:
        return self.windows_h * self.windows_w

    @property
    def tokens_per_window(self) -> int:
        return self.window_h * self.window_w

    @property
    def has_padding(self) -> bool:
        return self.padded_height != self.height or self.padded_width != self.width


def partition_windows(x: Tensor, geometry: WindowGeometry, groups: int, heads: int) -> Tensor:
    """Cut a map into per-head windows of tokens.

    The map is read tokens-last, ``(B, H, W, C)``: a token's ``d`` channels of one head are then
    one contiguous run, and the permuting copy moves such runs instead of gathering single
    values ``H * W`` apart. For a ``channels_last`` input (what the backbone's 1x1 convolutions
    produce) that view is free and the windows take a single copy (two with padding).

    Args:
        x: (B, groups * heads * d, H, W), any memory format; channels are ordered
            (group, head, d), e.g. the fused output of the Q/K/V projection with groups = 3.
    Returns:
        (groups, B, heads, num_windows, tokens_per_window, d) contiguous; padded tokens are zero.
    """
    B, channels, H, W = x.shape
    g = geometry
    if g.height != H or g.width != W:
        raise ValueError(f"Map of size {H}x{W} does not match its window geometry {g}.")
    if channels % (groups * heads) != 0:
        raise ValueError(f"{channels} channels cannot be split into {groups} x {heads} heads.")
    d = channels // (groups * heads)
    x = x.permute(0, 2, 3, 1)
    if g.has_padding:
        x = F.pad(x, (0, 0, 0, g.padded_width - W, 0, g.padded_height - H))
    x = x.view(B, g.windows_h, g.window_h, g.windows_w, g.window_w, groups, heads, d)
    # -> (groups, B, heads, windows_h, windows_w, window_h, window_w, d)
    x = x.permute(5, 0, 6, 1, 3, 2, 4, 7)
    return x.reshape(groups, B, heads, g.num_windows, g.tokens_per_window, d)


def reverse_windows(tokens: Tensor, geometry: WindowGeometry) -> Tensor:
    """Inverse of :func:`partition_windows` for one group, cropping the padding.

    Args:
        tokens: (B, heads, num_windows, tokens_per_window, d).
    Returns:
        (B, heads * d, H, W), channels ordered (head, d), in ``channels_last`` memory format
        (a strided view of it when the map was padded), written by one copy of runs of d values.
    """
    B, heads, _, _, d = tokens.shape
    g = geometry
    x = tokens.view(B, heads, g.windows_h, g.windows_w, g.window_h, g.window_w, d)
    # -> (B, windows_h, window_h, windows_w, window_w, heads, d) = (B, H, W, C) padded
    x = x.permute(0, 2, 4, 3, 5, 1, 6).reshape(B, g.padded_height, g.padded_width, heads * d)
    if g.has_padding:
        x = x[:, : g.height, : g.width]
    return x.permute(0, 3, 1, 2)


def reverse_window_indices(indices: Tensor, geometry: WindowGeometry) -> Tensor:
    """(B, heads, num_windows, tokens_per_window) per-token values -> (B, heads, H, W)."""
    B, heads = indices.shape[:2]
    g = geometry
    x = indices.view(B, heads, g.windows_h, g.windows_w, g.window_h, g.window_w)
    x = x.permute(0, 1, 2, 4, 3, 5).reshape(B, heads, g.padded_height, g.padded_width)
    return x[:, :, : g.height, : g.width]


def valid_token_mask(geometry: WindowGeometry, device: torch.device) -> Optional[Tensor]:
    """(num_windows, tokens_per_window) bool, True on real (unpadded) tokens; None if no padding."""
    g = geometry
    if not g.has_padding:
        return None
    rows = torch.arange(g.padded_height, device=device) < g.height
    cols = torch.arange(g.padded_width, device=device) < g.width
    rows = rows.view(g.windows_h, 1, g.window_h, 1)
    cols = cols.view(1, g.windows_w, 1, g.window_w)
    return (rows & cols).reshape(g.num_windows, g.tokens_per_window)


def _adaptive_bins(valid_extent: Tensor, window_extent: int, bins: int) -> Tensor:
    """Membership of positions in the bins of adaptive average pooling.

    Each window pools only its valid extent ``n`` (tokens ``0 .. n-1``), with the bins of
    ``torch.nn.AdaptiveAvgPool``: bin i covers ``[floor(i n / bins), ceil((i + 1) n / bins))``,
    so no bin is ever empty, also when ``n < bins`` (bins then repeat tokens).

    Args:
        valid_extent: (num,) valid length of each window along one axis.
    Returns:
        (num, bins, window_extent) float64 membership (0 or 1).
    """
    i = torch.arange(bins, device=valid_extent.device)
    n = valid_extent.view(-1, 1)
    start = torch.div(i * n, bins, rounding_mode="floor")
    end = torch.div((i + 1) * n + bins - 1, bins, rounding_mode="floor")
    pos = torch.arange(window_extent, device=valid_extent.device).view(1, 1, -1)
    return ((pos >= start.unsqueeze(-1)) & (pos < end.unsqueeze(-1))).double()


def centre_pooling_weights(
    geometry: WindowGeometry,
    bins: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Weights of the adaptive average pooling of each window's valid tokens to a bins x bins grid.

    Returns:
        (num_windows, bins * bins, tokens_per_window) of ``dtype``, each row sums to 1 and is
        zero on padded tokens; (1, bins * bins, tokens_per_window) when the map needs no
        padding (all windows then share the same weights).
        Centre index = row_bin * bins + column_bin.
    """
    g = geometry
    if g.has_padding:
        window_rows = torch.arange(g.windows_h, device=device)
        window_cols = torch.arange(g.windows_w, device=device)
        valid_h = (g.height - window_rows * g.window_h).clamp(max=g.window_h)
        valid_w = (g.width - window_cols * g.window_w).clamp(max=g.window_w)
    else:
        valid_h = torch.tensor([g.window_h], device=device)
        valid_w = torch.tensor([g.window_w], device=device)
    rows = _adaptive_bins(valid_h, g.window_h, bins)  # (nh, bins, window_h)
    cols = _adaptive_bins(valid_w, g.window_w, bins)  # (nw, bins, window_w)
    weights = rows[:, None, :, None, :, None] * cols[None, :, None, :, None, :]
    weights = weights.reshape(-1, bins * bins, g.tokens_per_window)
    return (weights / weights.sum(dim=-1, keepdim=True)).to(dtype)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution computed as one matrix product over tokens-last data.

    (B, C_in, H, W) -> (B, C_out, H, W) in ``channels_last`` memory format. For a
    ``channels_last`` input (as the backbone keeps its maps) both permutes are free and the
    product is a single GEMM of (B*H*W, C_in) by (C_in, C_out); PyTorch's 1x1 convolution
    instead converts to and from NCHW on several CPU paths. Parameters and state-dict keys are
    those of ``nn.Conv2d(in_channels, out_channels, 1)``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
        return y.permute(0, 3, 1, 2)
