"""Small building blocks shared by the pixel decoder and the transformer decoder (plain PyTorch).

They replace the few Detectron2 helpers Mask2Former relies on (``get_norm``, ``Conv2d`` with a norm,
``c2_xavier_fill``) so that the model core imports without detectron2.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

NORM_CHOICES = ("", "none", "GN", "BN", "SyncBN", "LN")


def build_norm(norm: Optional[str], channels: int) -> nn.Module:
    """A 2-D feature-map normalisation layer by name.

    Args:
        norm: ``""``/``"none"``/``None`` (identity), ``"GN"`` (GroupNorm with 32 groups),
            ``"BN"``, ``"SyncBN"``, or ``"LN"`` (GroupNorm with one group: layer norm over C, H, W).
        channels: feature channels.
    """
    if norm in (None, "", "none"):
        return nn.Identity()
    if norm == "GN":
        if channels % 32 != 0:
            raise ValueError(
                f"build_norm: GroupNorm(32) needs channels divisible by 32, got {channels}"
            )
        return nn.GroupNorm(32, channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "LN":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"build_norm: unknown norm {norm!r}; choose one of {NORM_CHOICES}")


def caffe2_xavier_init_(module: nn.Module) -> None:
    """Detectron2's ``c2_xavier_fill``: uniform Kaiming with ``a=1`` (= Xavier for linear layers),
    zero bias. Kept so the pixel decoder starts from the same distribution as Mask2Former."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def xavier_init_matrices_(module: nn.Module) -> None:
    """Xavier-uniform every parameter of ``module`` with two or more dimensions (Mask2Former's
    ``_reset_parameters``); biases and norm parameters keep their defaults."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class ConvNormAct(nn.Sequential):
    """``Conv2d -> norm -> activation``; the conv has a bias only when there is no norm.

    Args:
        in_channels, out_channels, kernel_size, stride: as ``nn.Conv2d``; padding keeps the size
            (``kernel_size // 2``) for stride 1.
        norm: see :func:`build_norm`.
        activation: ``None`` or ``"relu"``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        norm: Optional[str] = "",
        activation: Optional[str] = None,
    ):
        has_norm = norm not in (None, "", "none")
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=not has_norm,
        )
        caffe2_xavier_init_(conv)
        layers = [conv, build_norm(norm, out_channels)]
        if activation == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif activation is not None:
            raise ValueError(f"ConvNormAct: unknown activation {activation!r} (use None or 'relu')")
        super().__init__(*layers)


class MLP(nn.Module):
    """A stack of ``num_layers`` linear layers with ReLU between them (not after the last).

    Input ``(..., input_dim)`` -> output ``(..., output_dim)``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP: num_layers must be >= 1, got {num_layers}")
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
