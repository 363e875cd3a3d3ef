"""Detectron2 layer: meta-architectures registered in ``META_ARCH_REGISTRY`` (imports detectron2)."""
