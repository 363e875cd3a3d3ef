"""Detectron2 layer: the trainer (optimizer, scheduler, CPU/GPU distributed training)."""

from .checkpointer import CheckpointMismatchError, ClusterFormerCheckpointer, UnsafeCheckpointError
from .trainer import Trainer, create_ddp_model

__all__ = [
    "CheckpointMismatchError",
    "ClusterFormerCheckpointer",
    "Trainer",
    "UnsafeCheckpointError",
    "create_ddp_model",
]
