"""Detectron2 layer: evaluators (the standard ones are picked by ``evaluator_type``)."""
