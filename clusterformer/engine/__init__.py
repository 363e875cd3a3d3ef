"""Detectron2 layer: the trainer (optimizer, scheduler, CPU/GPU distributed training)."""
