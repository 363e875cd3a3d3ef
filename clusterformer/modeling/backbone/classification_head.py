"""Image classification on top of the backbone features: global pooling, norm, linear."""

from typing import Dict, Sequence

import torch
from torch import Tensor, nn

POOLINGS = ("last_stage", "all_stages")


def global_pool_features(
    features: Dict[str, Tensor], in_features: Sequence[str], pooling: str = "last_stage"
) -> Tensor:
    """Global average pooling of backbone features.

    Args:
        features: {name: (B, C_name, H, W)}.
        in_features: the feature names in stage order (e.g. res2..res5).
        pooling: "last_stage" pools ``in_features[-1]`` only; "all_stages" concatenates the pooled
            features of all ``in_features`` (the released code: 96+192+384+768 = 1440 for tiny).
    Returns:
        (B, C) pooled features.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    missing = [f for f in in_features if f not in features]
    if missing:
        raise KeyError(f"Features {missing} missing; got {sorted(features)}.")
    names = in_features[-1:] if pooling == "last_stage" else in_features
    return torch.cat([features[n].mean(dim=(-2, -1)) for n in names], dim=1)


class ClassificationHead(nn.Module):
    """Pool -> LayerNorm -> (dropout) -> Linear.

    Args:
        in_channels: {feature name: channels}, in stage order (e.g. backbone.out_feature_channels).
        num_classes: output logits.
        pooling: "last_stage" or "all_stages", see :func:`global_pool_features`.
        dropout: dropout before the linear layer.

    With "last_stage", build the backbone with ``out_features=["res5"]``: the GroupNorms of
    unused outputs would otherwise get no gradient (DDP with find_unused_parameters=False).
    """

    def __init__(
        self,
        in_channels: Dict[str, int],
        num_classes: int,
        pooling: str = "last_stage",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        if not in_channels:
            raise ValueError("ClassificationHead needs at least one input feature.")
        self.in_features = list(in_channels)
        self.pooling = pooling
        names = self.in_features[-1:] if pooling == "last_stage" else self.in_features
        self.pooled_dim = sum(in_channels[n] for n in names)
        self.norm = nn.LayerNorm(self.pooled_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.pooled_dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        """{name: (B, C, H, W)} -> (B, num_classes) logits."""
        pooled = global_pool_features(features, self.in_features, self.pooling)
        return self.fc(self.dropout(self.norm(pooled)))
