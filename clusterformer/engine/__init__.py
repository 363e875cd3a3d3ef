"""Detectron2 layer: the trainer (optimizer, scheduler, CPU/GPU distributed training)."""

from .trainer import Trainer, create_ddp_model

__all__ = ["Trainer", "create_ddp_model"]
