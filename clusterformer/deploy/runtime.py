"""Running an export: :class:`ExportedModel` loads a ``.ts`` (TorchScript) or ``.onnx`` (ONNX
Runtime, CPU) file and returns the raw outputs as named torch tensors, as the eager model's
``predict`` does (see :mod:`.export` for the inputs and outputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from torch import Tensor

from .export import ExportMetadata, check_input_size

BACKENDS = ("torchscript", "onnxruntime")


def backend_for(path: Path) -> str:
    """``.ts`` / ``.pt`` -> "torchscript", ``.onnx`` -> "onnxruntime"."""
    suffix = Path(path).suffix
    if suffix in (".ts", ".pt"):
        return "torchscript"
    if suffix == ".onnx":
        return "onnxruntime"
    raise ValueError(f"{path}: unknown export format {suffix!r}; expected .ts or .onnx")


class ExportedModel:
    """An exported ClusterFormer network.

    Args:
        path: the ``.ts`` or ``.onnx`` file (its ``<file>.json`` metadata next to it).
        num_threads: intra-op threads (ONNX Runtime's session option; for TorchScript the
            process-wide ``torch.set_num_threads`` is left alone). ``None``: the runtime's default.

    ``model(images (1, 3, H, W) float32)`` -> ``{name: tensor}`` in the metadata's output order;
    raises ValueError when the images do not have the shape the export was traced at.
    """

    def __init__(self, path: Path, num_threads: Optional[int] = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such export")
        self.backend = backend_for(self.path)
        self.metadata = ExportMetadata.load(self.path)
        if self.backend == "torchscript":
            self._module = torch.jit.load(str(self.path), map_location="cpu").eval()
            self._session = None
        else:
            try:
                import onnxruntime as ort
            except ImportError as error:
                raise ImportError(
                    "Running .onnx exports needs onnxruntime: pip install onnxruntime "
                    "(or pip install -e .[deploy])"
                ) from error
            options = ort.SessionOptions()
            if num_threads is not None:
                options.intra_op_num_threads = num_threads
                options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
            self._module = None

    @property
    def input_shape(self):
        return list(self.metadata.input_shape)

    def __call__(self, images: Tensor) -> Dict[str, Tensor]:
        check_input_size(images.shape, self.metadata)
        if images.dtype != torch.float32:
            raise ValueError(f"ExportedModel: images must be float32, got {images.dtype}")
        names = self.metadata.output_names
        if self._module is not None:
            with torch.no_grad():
                out = self._module(images.cpu())
            out = (out,) if isinstance(out, Tensor) else tuple(out)
        else:
            array = np.ascontiguousarray(images.detach().cpu().numpy())
            out = tuple(torch.from_numpy(a) for a in self._session.run(names, {"images": array}))
        return dict(zip(names, out))
