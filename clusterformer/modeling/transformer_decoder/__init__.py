"""Model core: query-level clustering transformer decoder (no detectron2 imports)."""

from .assignment_restriction import (
    box_assignment_restriction,
    mask_assignment_restriction,
    restrict_within,
)
from .clustering_decoder import ClusteringTransformerDecoder, MaskClassificationHeads
from .cross_attention import (
    ClusteringCrossAttention,
    MaskedCrossAttention,
    release_empty_restrictions,
)
from .position_encoding import PositionEmbeddingSine
from .prediction_heads import BOX_REFINEMENT_GRADIENTS, PredictionHeads, refine_boxes

__all__ = [
    "BOX_REFINEMENT_GRADIENTS",
    "ClusteringCrossAttention",
    "ClusteringTransformerDecoder",
    "MaskClassificationHeads",
    "MaskedCrossAttention",
    "PositionEmbeddingSine",
    "PredictionHeads",
    "box_assignment_restriction",
    "mask_assignment_restriction",
    "refine_boxes",
    "release_empty_restrictions",
    "restrict_within",
]
