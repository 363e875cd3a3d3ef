"""Registry of dataset mappers: a config names its mapper in ``INPUT.DATASET_MAPPER_NAME``.

Names are the short strings Mask2Former's configs use (``coco_panoptic_lsj``,
``mask_former_semantic``, ...), not class names, so the registry maps names to classes itself.
"""

from typing import Callable, Dict, Type

from detectron2.config import CfgNode

DATASET_MAPPER_REGISTRY: Dict[str, Type] = {}


def register_mapper(name: str) -> Callable[[Type], Type]:
    """Class decorator: register a mapper class (constructor ``(cfg, is_train)``) under ``name``."""

    def decorator(mapper_cls: Type) -> Type:
        if name in DATASET_MAPPER_REGISTRY:
            raise KeyError(
                f"Dataset mapper {name!r} is already registered "
                f"({DATASET_MAPPER_REGISTRY[name].__qualname__})"
            )
        DATASET_MAPPER_REGISTRY[name] = mapper_cls
        return mapper_cls

    return decorator


def build_dataset_mapper(cfg: CfgNode, is_train: bool) -> Callable[[dict], dict]:
    """Build the mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME`` for training or testing."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPER_REGISTRY:
        known = ", ".join(sorted(DATASET_MAPPER_REGISTRY))
        raise KeyError(
            f"INPUT.DATASET_MAPPER_NAME={name!r} is not a registered mapper; known: {known}"
        )
    return DATASET_MAPPER_REGISTRY[name](cfg, is_train)
