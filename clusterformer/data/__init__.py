"""Detectron2 layer: data set registration and dataset mappers."""

from . import datasets  # noqa: F401  (registers the data sets)
