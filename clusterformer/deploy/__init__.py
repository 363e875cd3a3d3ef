"""Deployment: export the model core to TorchScript / ONNX (:mod:`.export`), run the exports
(:mod:`.runtime`), and, with detectron2, a predictor on an export (:mod:`.predictor`).
See docs/deployment.md."""

from .export import (
    FORMATS,
    ExportMetadata,
    check_input_size,
    eager_outputs,
    export,
    export_onnx,
    export_torchscript,
    trace_torchscript,
)
from .runtime import ExportedModel

__all__ = [
    "FORMATS",
    "ExportMetadata",
    "ExportedModel",
    "check_input_size",
    "eager_outputs",
    "export",
    "export_onnx",
    "export_torchscript",
    "trace_torchscript",
]
