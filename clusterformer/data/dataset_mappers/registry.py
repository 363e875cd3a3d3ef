"""Registry of dataset mappers: a config names its mapper in ``INPUT.DATASET_MAPPER_NAME``."""

from typing import Callable

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """
Dataset mappers. Each entry is a class whose constructor is ``@configurable`` and takes
``(cfg, is_train)``; an instance maps one data set dict to the model's input dict.
"""


def build_dataset_mapper(cfg: CfgNode, is_train: bool) -> Callable[[dict], dict]:
    """Build the mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME`` for training or testing."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPER_REGISTRY:
        known = ", ".join(sorted(k for k, _ in DATASET_MAPPER_REGISTRY))
        raise KeyError(
            f"INPUT.DATASET_MAPPER_NAME={name!r} is not a registered mapper; known: {known}"
        )
    return DATASET_MAPPER_REGISTRY.get(name)(cfg, is_train)
