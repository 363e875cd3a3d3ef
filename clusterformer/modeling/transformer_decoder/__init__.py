"""Model core: query-level clustering transformer decoder (no detectron2 imports)."""

from .clustering_decoder import (
    ClusteringTransformerDecoder,
    MaskClassificationHeads,
    mask_assignment_restriction,
)
from .cross_attention import (
    ClusteringCrossAttention,
    MaskedCrossAttention,
    cluster_means,
    clustering_assignment,
    release_empty_restrictions,
)
from .position_encoding import PositionEmbeddingSine

__all__ = [
    "ClusteringCrossAttention",
    "ClusteringTransformerDecoder",
    "MaskClassificationHeads",
    "MaskedCrossAttention",
    "PositionEmbeddingSine",
    "cluster_means",
    "clustering_assignment",
    "mask_assignment_restriction",
    "release_empty_restrictions",
]
