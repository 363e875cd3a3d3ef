"""Meta-architectures in ``META_ARCH_REGISTRY``: ``ClusterFormer`` and ``ClusterFormerClassifier``."""

from .. import backbone  # noqa: F401  (registers D2ClusterFormer, which both build)
from .classifier import ClusterFormerClassifier
from .clusterformer_model import ClusterFormer

__all__ = ["ClusterFormer", "ClusterFormerClassifier"]
