"""Detectron2 layer: evaluators (the standard ones are picked by ``evaluator_type``)."""

from .build import build_evaluator

__all__ = ["build_evaluator"]
