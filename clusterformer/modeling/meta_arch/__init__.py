"""Detectron2 layer: meta-architectures in ``META_ARCH_REGISTRY`` (imports detectron2)."""

from ..backbone import d2_clusterformer  # noqa: F401  (registers D2ClusterFormer)
from .classifier import ClusterFormerClassifier
from .clusterformer_model import ClusterFormer

__all__ = ["ClusterFormer", "ClusterFormerClassifier"]
