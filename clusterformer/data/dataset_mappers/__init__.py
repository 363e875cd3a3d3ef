"""Dataset mappers, selected by ``INPUT.DATASET_MAPPER_NAME`` (see :func:`build_dataset_mapper`)."""

from . import classification_mapper  # noqa: F401  (registers "classification")
from .registry import DATASET_MAPPER_REGISTRY, build_dataset_mapper, register_mapper

__all__ = ["DATASET_MAPPER_REGISTRY", "build_dataset_mapper", "register_mapper"]
