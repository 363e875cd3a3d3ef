"""Model core: the ClusterFormer backbone (no detectron2 imports).

The Detectron2 wrapper, ``D2ClusterFormer``, is in ``clusterformer/d2/backbone.py``.
"""

from .classification_head import ClassificationHead, global_pool_features
from .clusterformer import (
    MIXERS,
    PRESETS,
    STAGE_NAMES,
    STAGE_STRIDES,
    ClusterBlock,
    ClusterFormerBackbone,
    ClusterStage,
    StageClusterIds,
    build_clusterformer_backbone,
    clusterformer_nano,
    clusterformer_preset,
    clusterformer_small,
    clusterformer_tiny,
    coordinate_channels,
    default_clustering_settings,
)
from .clustering_mixer import ClusteringMixer, FeatureDispatch, RecurrentClusteringAttention
from .window_attention_mixer import WindowAttentionMixer
from .windows import WindowGeometry

__all__ = [
    "MIXERS",
    "PRESETS",
    "STAGE_NAMES",
    "STAGE_STRIDES",
    "ClassificationHead",
    "ClusterBlock",
    "ClusterFormerBackbone",
    "ClusterStage",
    "ClusteringMixer",
    "FeatureDispatch",
    "RecurrentClusteringAttention",
    "StageClusterIds",
    "WindowAttentionMixer",
    "WindowGeometry",
    "build_clusterformer_backbone",
    "clusterformer_nano",
    "clusterformer_preset",
    "clusterformer_small",
    "clusterformer_tiny",
    "coordinate_channels",
    "default_clustering_settings",
    "global_pool_features",
]
